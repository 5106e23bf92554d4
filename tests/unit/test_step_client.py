"""The step server's hold protocol (the GPU tier's timings start both servers held at session start and warm them once
the reference run is done: harness.step_client, tests/gpu/conftest.py). The server side is harness.step_server's own
callback, driven by a stand-in for the trainer's loop (a real tiny trainer took 25 s on 2 cores for the same check)."""

import sys
import time

from harness.step_client import StepServer

FAKE_TRAINER = '''
import argparse, json, sys, types
from harness.step_server import SteppedByStdin

p = argparse.ArgumentParser()
p.add_argument("--warmup", type=int)
p.add_argument("--hold", action="store_true")
p.add_argument("--skip-train-begin", action="store_true")
args = p.parse_args()
callback = SteppedByStdin(args.warmup, args.hold)
state, control = types.SimpleNamespace(global_step=0), types.SimpleNamespace(should_training_stop=False)
if "--skip-train-begin" not in sys.argv:
    callback.on_train_begin(None, state, control)
steps = 0
while not control.should_training_stop:  # what Trainer.train does around each step, as far as the callback sees
    callback.on_step_begin(None, state, control)
    callback.tokens = 7
    steps += 1
    state.global_step += 1
    callback.on_step_end(None, state, control)
print(json.dumps({"backend": "fake", "steps_run": steps, "warmup_steps": args.warmup}), flush=True)
'''


def fake(tmp_path) -> list[str]:
    (tmp_path / "fake_trainer.py").write_text(FAKE_TRAINER)
    return [sys.executable, str(tmp_path / "fake_trainer.py")]


def test_a_held_server_loads_warms_on_request_then_steps_and_stops(tmp_path):
    server = StepServer("fake", "none", warmup=2, hold=True, command=fake(tmp_path))
    try:
        assert server.state == "held"  # the constructor returned at once
        time.sleep(0.3)
        assert server.proc.poll() is None  # holding before its first step, not training
        server.wait_ready()  # waits for "loaded", sends "warm", waits for "ready" after the 2 warm-up steps
        assert server.state == "ready" and server.warm_seconds is not None
        server.step()
        server.step()
        assert server.tokens == [7, 7]
        stats = server.close()
        # 2 warm-up steps, 2 timed, and the step that "stop" ended (Trainer runs the step whose begin asked to stop)
        assert stats == {"backend": "fake", "steps_run": 5, "warmup_steps": 2}
    finally:
        server.kill()


def test_a_server_that_dies_names_itself_and_its_log():
    server = StepServer("hf", "none", hold=True,
                        command=[sys.executable, "-c", "import sys; sys.exit('cannot load model none')"])
    try:
        server.wait_ready()
    except AssertionError as exc:
        assert "step server (hf) exited (code 1) before printing 'loaded' or 'ready'" in str(exc)
        assert "cannot load model none" in str(exc) and server.state == "exited"
    else:
        raise AssertionError("a server that exited reported ready")
    finally:
        server.kill()


def test_a_trainer_that_never_begins_training_warms_without_waiting_and_does_not_deadlock(tmp_path):
    """A trainer loop without on_train_begin (a patched loop that dropped it) prints "ready" and no "loaded": the
    client takes it as ready (waiting for "loaded" would wait forever on a server that waits for "step")."""
    server = StepServer("fake", "none", warmup=1, hold=True, command=[*fake(tmp_path), "--skip-train-begin"])
    try:
        server.wait_ready()
        assert server.state == "ready" and server.warm_seconds is None
        server.step()
        assert server.close()["steps_run"] == 3
    finally:
        server.kill()


def test_a_server_that_died_while_another_thread_warmed_it_says_so_again_with_its_log():
    """The GPU conftest's warmer thread swallows a death while loading (the server's own timing test reports it): the
    server's later wait_ready() and step() raise the same error with its log, not a bare BrokenPipeError."""
    server = StepServer("unsloth", "none", hold=True,
                        command=[sys.executable, "-c", "import sys; sys.exit('CUDA out of memory while loading')"])
    try:
        try:
            server.warm()
        except AssertionError:
            pass
        for call in (server.wait_ready, server.step):
            try:
                call()
            except AssertionError as exc:
                assert "step server (unsloth) exited (code 1)" in str(exc) and "CUDA out of memory" in str(exc)
            else:
                raise AssertionError(f"{call.__name__} on a dead server did not raise")
    finally:
        server.kill()


def test_a_banner_line_that_begins_with_a_protocol_word_is_not_taken_for_it(tmp_path):
    (tmp_path / "chatty.py").write_text("print('ready to patch your computer', flush=True)\n" + FAKE_TRAINER)
    server = StepServer("fake", "none", warmup=1, hold=True, command=[sys.executable, str(tmp_path / "chatty.py")])
    try:
        server.wait_ready()
        assert server.warm_seconds is not None  # it waited for "loaded", sent "warm", then read the real "ready"
    finally:
        server.kill()
