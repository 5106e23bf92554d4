"""`python -m harness ...`: materialize, tokenize, finetune, experiments, certify, doctor, catalog, export-gguf, verify-gguf, compare-gguf, llama-cpp, diff, matrix, bundle."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _offline_defaults() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def cmd_materialize(args) -> int:
    from harness.models import resolve

    print(resolve(args.model).path)
    return 0


def cmd_tokenize(args) -> int:
    from harness.models import resolve
    from harness.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(resolve(args.model).path))
    for text in args.text:
        print(json.dumps(tokenizer.encode(text, add_special_tokens=False)))
    return 0


def cmd_finetune(args) -> int:
    if os.environ.get("HARNESS_FAULT"):  # a fault-injection run of the suite (tests/slow/conftest.py's tiny run):
        # planted before the libraries are imported, as pytest plants it before any test imports them
        from harness.pytest_plugin import apply_planted_fault_in_finetune

        apply_planted_fault_in_finetune()
    import torch

    if not torch.cuda.is_available() and os.environ.get("HARNESS_KEEP_FREED_MEMORY", "1") != "0":
        from harness.malloc_policy import keep_freed_memory

        keep_freed_memory()  # a CPU run's steps stop faulting their logits in afresh (harness.malloc_policy)
    from harness.finetune import finetune

    record = finetune(model=args.model, backend=args.backend, out_dir=args.out, max_steps=args.max_steps,
                      batch_size=args.batch_size, eval_limit=args.eval_limit,
                      report_to="wandb" if args.wandb else "none", export=not args.no_export,
                      evaluate_base=not args.no_base_eval, arm=args.arm, seed=args.seed,
                      base_eval_only=args.base_eval_only)
    if args.base_eval_only:
        base = record["base_eval"]
        print(json.dumps({**{k: record.get(k) for k in ("model", "backend", "phases")},
                          "base_eval": {k: base.get(k) for k in ("prompts", "json_valid_rate", "exact_match")}},
                         indent=1, ensure_ascii=False))
        print(f"run record: {Path(record['out_dir']) / 'run.json'}")
        return 0
    summary = {k: record.get(k) for k in ("model", "backend", "phases", "throughput", "memory", "val_loss",
                                          "loss_first10", "loss_last10", "artifacts")}
    summary["eval"] = {k: record["eval"][k] for k in ("prompts", "json_valid_rate", "exact_match")}
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    print(f"run record: {Path(record['out_dir']) / 'run.json'}")
    return 0


def cmd_certify(args) -> int:
    """Run the claim suite (pytest) and write reports/<run>/index.html and results.json."""
    if args.no_experiments and not args.gpu:
        print("error: --no-experiments goes with --gpu (without it certify runs no experiment claim: they need a GPU "
              "and `certify --gpu` or `pytest -m gpu --experiments`)", file=sys.stderr)
        return 3
    from harness.models import EMBEDDED_MODELS, ModelSourceError, resolve

    if args.model not in EMBEDDED_MODELS:  # a path or hub name: refused before anything runs (an embedded model that
        try:                                # cannot be built is an environment problem the run reports: conftest.py)
            resolve(args.model)
        except ModelSourceError as exc:
            print(f"error: --model {args.model}: {exc} (nothing was certified)", file=sys.stderr)
            return 3
    os.environ["HARNESS_MODEL"] = args.model
    tests = Path(__file__).resolve().parent.parent / "tests"
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            print("error: certify --gpu needs a CUDA GPU (on a CPU machine, `certify` runs the CPU tier)", file=sys.stderr)
            return 3
        from harness.tiers import certify_all

        outcome = certify_all(args.model, (["-k", args.select] if args.select else []) + args.pytest_args, tests,
                              self_tests=args.with_self_tests, experiments=not args.no_experiments)
    else:
        outcome = _certify_cpu(args, tests)
    from harness.results import reports_root

    print(f"report: {reports_root() / 'latest' / 'index.html'}")
    print({0: "certified: every claim that ran is as recorded", 1: _regression_line(),
           2: "ENVIRONMENT PROBLEM: no regression, but some claims could not be checked here (python -m harness doctor)",
           3: "the run did not complete: the report is partial"}[outcome])
    return outcome


def _regression_line() -> str:
    """Exit 1's line: which claims moved and which are red by a failing test (harness.results.regression_headline)."""
    from harness.results import regression_headline, reports_root

    try:
        data = json.loads((reports_root() / "latest" / "results.json").read_text())
    except (OSError, ValueError):
        return "REGRESSION (or a failing test): see the report"
    return f"REGRESSION: {regression_headline(data)} (see the report)"


def _certify_cpu(args, tests: Path) -> int:
    import pytest

    # This process imported harness (the pytest plugin's package) before pytest starts, so pytest cannot rewrite its
    # asserts (the test modules are rewritten as usual) and warned of it in every certification's summary.
    argv = [str(tests), "-q", "-p", "no:cacheprovider", f"--model={args.model}",
            "-W", "ignore:Module already imported so cannot be rewritten; harness:pytest.PytestAssertRewriteWarning"]
    if not args.with_self_tests:
        argv.append("--no-self-tests")
    if args.select:
        argv += ["-k", args.select]
    code = pytest.main(argv + args.pytest_args)
    from harness.results import certify_exit_code, reports_root

    try:
        data = json.loads((reports_root() / "latest" / "results.json").read_text())
    except (OSError, ValueError):
        data = None
    return certify_exit_code(int(code), data)


def cmd_catalog(args) -> int:
    from spec.catalog import main

    return main(["--write"] if args.write else [])


def cmd_dataset(args) -> int:
    from harness.dataset import card, card_markdown, generate, leaks

    facts = card(generate(args.seed))
    print(json.dumps(facts, ensure_ascii=False, indent=1) if args.json else card_markdown(facts))
    leaking = leaks(facts["checks"])
    if leaking:
        print(f"the split leaks: {', '.join(leaking)}", file=sys.stderr)
    return 1 if leaking else 0


def cmd_doctor(args) -> int:
    from harness.doctor import main

    return main()


def cmd_export_gguf(args) -> int:
    from harness.gguf_export import export_q8_0
    from harness.models import resolve

    print(export_q8_0(resolve(args.model).path, Path(args.out)))
    return 0


def _checkpoint_folder(value, needs: tuple[str, ...]) -> Path | None:
    """--against's folder, or None where it was not given; a ModelSourceError (one line, exit 2) where it lacks `needs`."""
    if value is None:
        return None
    from harness.models import ModelSourceError

    folder = Path(value)
    missing = [name for name in needs if not (folder / name).is_file()]
    if missing:
        raise ModelSourceError(f"--against {folder}: not a checkpoint folder (no {', '.join(missing)}); give the folder "
                               "of the model the GGUF was exported from")
    return folder


def cmd_verify_gguf(args) -> int:
    from harness.gguf_verify import verify

    report = verify(Path(args.file), _checkpoint_folder(args.against, ("config.json", "model.safetensors")),
                    llama=not args.no_llama)
    print(json.dumps(report, indent=1, ensure_ascii=False, default=str))
    return 0 if report.get("ok") else 1


def cmd_compare_gguf(args) -> int:
    from harness.gguf_compare import compare, summary

    against = _checkpoint_folder(args.against, ("tokenizer_config.json",))
    prompt_ids = None
    if against:
        from harness.dataset import generate
        from harness.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(str(against))
        prompt_ids = [list(tokenizer.apply_chat_template(ex.messages[:-1], add_generation_prompt=True,
                                                         return_dict=True)["input_ids"]) for ex in generate(0)["test"][:20]]
    from harness.corpus import tokenizer_corpus

    report = compare(Path(args.a), Path(args.b), prompt_ids, tokenizer_corpus())
    report["summary"] = summary(report)
    print(json.dumps(report, indent=1, ensure_ascii=False, default=str))
    flat = report["summary"]
    same = not flat["tensors_differing_vs_project_exporter"] and not flat["tensor_type_differences"]
    return 0 if same and not flat.get("llamacpp_tokenization_differs") else 1


def cmd_llama_cpp(args) -> int:
    """Vendor llama.cpp from the llama-cpp-python sdist: converter always; llama-quantize with --build."""
    import tempfile

    from harness.llama_cpp_vendor import build_quantizer, download_sdist, prune_sdist, unsloth_env, vendored_tree

    if args.pack:  # the pruned sdist to carry; the tree and the bindings both come from it on the runner
        with tempfile.TemporaryDirectory() as tmp:
            sdist = Path(args.sdist) if args.sdist else download_sdist(Path(tmp))
            print(f"packed: {prune_sdist(sdist, Path(args.pack))}")
        return 0
    tree = vendored_tree(Path(args.sdist) if args.sdist else None)
    if args.build:
        print(json.dumps(build_quantizer(tree)))
    print(tree)
    for key, value in unsloth_env(tree).items():
        print(f"export {key}={value}")
    return 0


def cmd_record_output_baseline(args) -> int:
    from harness.output_baseline import record

    try:
        path = record(args.run_json, args.reason, args.results)
    except (OSError, KeyError, ValueError) as exc:
        print(f"record-output-baseline: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}: commit it with the reason in the commit message")
    return 0


def cmd_diff(args) -> int:
    from harness.diff import diff_main, load

    try:  # the inputs first: diff.load names what it wants (a results.json, a report folder or a root)
        old, new = load(args.old), load(args.new)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return diff_main(old, new, html_out=args.html)


def cmd_matrix(args) -> int:
    from harness.matrix import matrix_main

    # A leg that left nothing (a CI job that died before its artifact) is a column "could not be installed", by design;
    # a path that does not exist may also be a typo: said on stderr, the page is still built.
    for leg in args.legs:
        if not Path(leg).exists():
            print(f"warning: {leg} does not exist: shown as a leg that could not be installed", file=sys.stderr)
    return matrix_main(args.legs, out=args.out, keep_order=args.keep_order, rtol=args.rtol)


def cmd_experiments(args) -> int:
    """Run the experiment arms (resuming complete ones), then judge the three experiment claims."""
    import spec
    from harness.experiments import EXPERIMENTS, all_arms, measurements, run_arms
    from spec.core import evaluate

    seeds = args.seeds
    outcomes = run_arms(args.out, all_arms(), seeds, model=args.model, backend=args.backend, max_steps=args.max_steps,
                        eval_limit=args.eval_limit, parallel=args.parallel)
    failed = {k: v for k, v in outcomes.items() if not v.startswith("complete")}
    for name, why in failed.items():
        print(f"{name}: {why}", file=sys.stderr)
    if failed:
        return 1
    facts = measurements(args.out, seeds)
    verdicts = {}
    for claim_id in EXPERIMENTS:
        outcome = evaluate(spec.CLAIMS[claim_id], facts[claim_id], "gpu")
        verdicts[claim_id] = {"verdict": outcome.verdict, "expected": outcome.expected, "evidence": outcome.evidence}
        print(f"{claim_id}: {outcome.verdict} (recorded expectation: {outcome.expected})")
    (Path(args.out) / "experiments.json").write_text(json.dumps({"runs": outcomes, "measurements": facts,
                                                                  "verdicts": verdicts}, indent=1, default=str))
    print(f"results: {Path(args.out) / 'experiments.json'}")
    return 0


def cmd_bundle(args) -> int:
    from harness.bundle import build_bundle

    constraints = Path(args.constraints) if args.constraints else None
    if constraints is not None and not constraints.is_file():
        print(f"error: no constraints file {constraints} (a leg's pins live in constraints/<leg>.txt)", file=sys.stderr)
        return 2
    print(build_bundle(args.python, args.platform, Path(args.output), extra=args.extra, constraints=constraints,
                       overlay=args.overlay))
    return 0


def _positive_int(text: str) -> int:
    """argparse type: a whole number ≥ 1 (a step count, a batch, a limit, runs at once); argparse's one-line usage
    error otherwise (`--max-steps -1` once ran the recipe by epochs: transformers' "no step limit", 4,500 steps)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return value


def _seeds(text: str) -> list[int]:
    """argparse type: comma-separated whole numbers (training seeds)."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated whole numbers, e.g. 3407,3408,3409") from None


def build_parser() -> argparse.ArgumentParser:
    from harness import backends
    from harness.recipe import ARMS, EXPERIMENT_SEEDS, HANDBOOK

    p = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    model_help = "gemma3-270m (default, embedded), tiny, a local checkpoint folder or an HF hub id"

    s = sub.add_parser("materialize", help="build the model's checkpoint in the cache and print its path")
    s.add_argument("--model", default="gemma3-270m", help=model_help)
    s.set_defaults(func=cmd_materialize)

    s = sub.add_parser("tokenize", help="print the token ids of each TEXT as a JSON list, one per line")
    s.add_argument("--model", default="gemma3-270m", help=model_help)
    s.add_argument("text", nargs="+")
    s.set_defaults(func=cmd_tokenize)

    s = sub.add_parser("finetune", help="run the handbook's recipe end to end and write run.json")
    s.add_argument("--model", default="gemma3-270m", help=model_help)
    s.add_argument("--backend", choices=backends.names(), default="hf")
    s.add_argument("--max-steps", type=_positive_int, help=f"optimizer steps (recipe: {HANDBOOK.max_steps})")
    s.add_argument("--batch-size", type=_positive_int,
                   help=f"per-device batch size (recipe: {HANDBOOK.per_device_train_batch_size})")
    s.add_argument("--eval-limit", type=_positive_int,
                   help=f"held-out conversations to generate from (recipe: {HANDBOOK.eval_limit})")
    s.add_argument("--out", type=Path)
    s.add_argument("--wandb", action="store_true", help="log to Weights & Biases (WANDB_MODE=offline works)")
    s.add_argument("--no-export", action="store_true")
    s.add_argument("--no-base-eval", action="store_true", help="skip scoring the base model before training")
    s.add_argument("--base-eval-only", action="store_true",
                   help="load and score the base model only (run.json's base_eval; the GPU tier runs it beside the "
                        "fine-tune, which then takes --no-base-eval)")
    s.add_argument("--arm", default="handbook", choices=list(ARMS), help="an experiment arm")
    s.add_argument("--seed", type=int, help=f"training seed (recipe: {HANDBOOK.seed})")
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser("experiments", help="LORA-MLP-ABLATION, MASK-STABILITY, LR-WARMUP-STABILITY: arms × seeds")
    s.add_argument("--model", default="gemma3-270m", help=model_help)
    s.add_argument("--backend", choices=backends.names(), default="unsloth")
    s.add_argument("--seeds", type=_seeds, default=",".join(map(str, EXPERIMENT_SEEDS)),
                   help="comma-separated training seeds (at least 3 to judge noise)")
    s.add_argument("--max-steps", type=_positive_int, help=f"steps per run (recipe: {HANDBOOK.max_steps})")
    s.add_argument("--eval-limit", type=_positive_int, help=f"held-out conversations per run (recipe: {HANDBOOK.eval_limit})")
    s.add_argument("--parallel", type=_positive_int, default=4, help="runs at once (on one GPU: up to ~12 for the 270M model)")
    s.add_argument("--out", type=Path, default=Path("reports/experiments"))
    s.set_defaults(func=cmd_experiments)

    s = sub.add_parser("compare-gguf", help="two GGUF files of one checkpoint: tensors, token table, llama.cpp outputs")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--against", type=Path, help="the checkpoint folder (its tokenizer builds the prompts)")
    s.set_defaults(func=cmd_compare_gguf)

    s = sub.add_parser("llama-cpp", help="vendor llama.cpp (converter + llama-quantize) from PyPI for offline GGUF export")
    s.add_argument("--sdist", help="a local llama_cpp_python-<version>.tar.gz instead of downloading it")
    s.add_argument("--build", action="store_true", help="also build llama-quantize (cmake, a few minutes)")
    s.add_argument("--pack", help="write a pruned sdist (~5 MB) into this folder, to carry to an air-gapped runner: "
                                  "`python -m harness llama-cpp --sdist FILE --build` and `pip install FILE` there")
    s.set_defaults(func=cmd_llama_cpp)

    s = sub.add_parser("certify", help="run the claim suite and write the compliance report")
    s.add_argument("--model", default="gemma3-270m", help=model_help)
    s.add_argument("--gpu", action="store_true", help="on a CUDA runner: every claim, the CPU tier with CUDA hidden, then "
                                                      "the GPU tier (the experiments included), merged into one report")
    s.add_argument("--no-experiments", action="store_true",
                   help="with --gpu: leave out the three experiment claims (50 fine-tunes, over an hour on one H200): the "
                        "GPU tier's other claims in ~10 min; the report's Scope section names what was left out")
    s.add_argument("-k", dest="select", help="pytest -k expression")
    s.add_argument("--with-self-tests", action="store_true",
                   help="also run the suite's self-tests (marker selftest: its own logic, which no installed library "
                        "changes; `python -m pytest` and CI run them); by default certify runs every claim test and "
                        "every check of a measuring instrument against the installed libraries")
    s.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    s.set_defaults(func=cmd_certify)

    s = sub.add_parser("catalog", help="print the claim catalog generated from spec/ (--write updates CATALOG.md)")
    s.add_argument("--write", action="store_true")
    s.set_defaults(func=cmd_catalog)

    s = sub.add_parser("dataset", help="the dataset card: sizes, lexicon, value pools and the split's overlap checks "
                                       "(exit 1 if a held-out combination, value or word leaks into training, or a validation "
                                       "combination into the test: harness.dataset.leaks)")
    s.add_argument("--card", action="store_true", help="print the card (the default)")
    s.add_argument("--json", action="store_true", help="as JSON")
    s.add_argument("--seed", type=int, default=HANDBOOK.dataset_seed)
    s.set_defaults(func=cmd_dataset)

    s = sub.add_parser("doctor", help="check each independent reader (llama.cpp, its converter, unsloth_zoo, Chromium)")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("export-gguf", help="write a Q8_0 GGUF of a checkpoint with this project's exporter")
    s.add_argument("--model", default="gemma3-270m", help=model_help)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_export_gguf)

    s = sub.add_parser("verify-gguf", help="verify a GGUF file (layout, error vs checkpoint, metadata, llama.cpp)")
    s.add_argument("file")
    s.add_argument("--against", help="the checkpoint folder it was exported from")
    s.add_argument("--no-llama", action="store_true", help="skip the llama.cpp checks")
    s.set_defaults(func=cmd_verify_gguf)

    s = sub.add_parser("record-output-baseline", help="keep a GPU run's per-prompt held-out outcomes as CHECK-OUTPUT's "
                                                     "paired baseline (spec/baselines/); only with a written reason")
    s.add_argument("run_json", help="run.json of the reference fine-tune")
    s.add_argument("--reason", required=True, help="why the baseline is (re)recorded; goes into the file")
    s.add_argument("--results", help="the results.json of the same run: its environment (versions, GPU, commit) is "
                                     "recorded with the baseline when the run record names none")
    s.set_defaults(func=cmd_record_output_baseline)
    s = sub.add_parser("diff", help="compare two runs (results.json or report folders); exit 1 on a new regression or a claim checked before and skipped now")
    s.add_argument("old")
    s.add_argument("new")
    s.add_argument("--html", help="also write the diff as an HTML file")
    s.set_defaults(func=cmd_diff)

    s = sub.add_parser("matrix", help="claims × version legs on one page (HTML + JSON): per upgrade step, safe or what moved")
    s.add_argument("legs", nargs="+", help="each leg's report folder (reports/<leg>), run folder or results.json")
    s.add_argument("--out", default="reports/matrix", help="writes matrix.html and matrix.json here")
    s.add_argument("--keep-order", action="store_true", help="columns in the order given (default: by versions)")
    s.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance for evidence figures (GPU timings: 0.05)")
    s.set_defaults(func=cmd_matrix)

    s = sub.add_parser("bundle", help="build an offline wheelhouse of the GPU extra for an air-gapped runner")
    s.add_argument("--python", default="3.12")
    s.add_argument("--platform", default="manylinux_2_28_x86_64")
    s.add_argument("-o", "--output", default="dist/gpu-bundle.tar.xz")
    s.add_argument("--extra", nargs="*", default=[], help="more NAME==VERSION requirements to include")
    s.add_argument("--constraints", help="a leg's pins (constraints/<leg>.txt): each pinned package at the leg's version")
    s.add_argument("--overlay", action="store_true",
                   help="with --constraints: only what the leg pins differently from the control, to go in front of the "
                        "control bundle on PYTHONPATH (scripts/gpu_runner.sh, LEG=<leg>)")
    s.set_defaults(func=cmd_bundle)
    return p


def main(argv: list[str] | None = None) -> int:
    _offline_defaults()
    args = build_parser().parse_args(argv)
    from harness.doctor import EnvironmentProblem
    from harness.gguf_verify import GGUFVerifyError
    from harness.models import ModelSourceError

    # Bad input and a broken reader get one line that says what to do, never a traceback (verify-gguf on a truncated
    # file printed two chained tracebacks before its message until 2026-11-29).
    try:
        return args.func(args)
    except ModelSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except GGUFVerifyError as exc:  # the file is at fault: the verdict a failed check gives (exit 1)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except EnvironmentProblem as exc:  # a reader missing or crashing on Google's own file too: not the input's fault
        print(f"error: {exc} (python -m harness doctor checks every reader)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
