"""Mutation table of issue 17: break the code on purpose, one claim at a time, and show that a test fails.

    python scripts/mutations.py --list            the mutations (nothing is run)
    python scripts/mutations.py                   every mutation, one at a time; a markdown table on stdout
    python scripts/mutations.py --only ID [--only ID2 ...]   (or --only ID,ID2)
    python scripts/mutations.py --quick           only the mutations whose tests are not slow
    python scripts/mutations.py --baseline        the selected mutations' tests on the unmutated tree
    python scripts/mutations.py --error-paths     count the KdlibError messages that some test quotes

Each mutation is (id, the weakness of issue 17 it targets, file, exact old text, new text, the pytest node
ids expected to catch it). The old text must occur exactly once in its file. A mutation is applied to the
working tree, the selected tests run in one pytest process (``-x``, one torch thread, ``PYTHONPATH`` = this
checkout, no bytecode written) under a timeout, and the file is restored byte for byte with its old mtime,
in a ``finally`` (Ctrl-C and SIGTERM included); ``git diff --quiet`` on the file must then hold, or the
script stops. A file with uncommitted changes is never mutated. The exit status is 1 when any mutation
survives (its tests pass, time out, or do not run), else 0.

Run it from the checkout's root with the project's interpreter, e.g.
``OMP_NUM_THREADS=1 PYTHONPATH=$PWD /work/main/.venv/bin/python scripts/mutations.py --quick``.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK_TIMEOUT_S, SLOW_TIMEOUT_S = 300, 900

# The weaknesses of issue 17's "Why" list, in its order.
NOISE = "label noise never read from the generated labels"
PRIMARY = "primary-category rule not pinned"
REFERENCE = "reference takes its upsampling / capture / category rule from kdlib"
LOSSES = "no known answers for the distillation losses"
BOUNDS = "bounds looser than the README's numbers"
SAYS_NOTHING = "assertions that say nothing"
NARROW = "flaky or narrow (kill test, DataLoader workers)"
ERRORS = "documented error path without a test"


@dataclass(frozen=True)
class Mutation:
    id: str
    weakness: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    slow: bool = False

    @property
    def timeout_s(self) -> int:
        return SLOW_TIMEOUT_S if self.slow else QUICK_TIMEOUT_S


T_WORLD, T_BRODEN, T_DISSECT = "tests/test_world.py", "tests/test_broden.py", "tests/test_dissect.py"
T_MASKS, T_INPUTS, T_KNOWN = "tests/test_dissect_masks.py", "tests/test_dissect_inputs.py", "tests/test_losses_known.py"
DOCUMENTED_TRAINING = "tests/test_train.py::test_documented_training_errors_are_one_line"
ENGINE_VS_REFERENCE = f"{T_DISSECT}::test_engine_agrees_with_naive_and_per_image"

MUTATIONS: tuple[Mutation, ...] = (
    # -- label noise --------------------------------------------------------------------------------
    Mutation("noise-ignored", NOISE, "kdlib/data/world.py",
             "if noise_rng.random() < params.label_noise:", "if noise_rng.random() < 0.0:",
             (f"{T_WORLD}::test_label_noise_is_in_the_train_folders_only_and_at_its_rate",)),
    Mutation("noise-in-val", NOISE, "kdlib/data/world.py",
             'if job.split == "train" and params.label_noise > 0', 'if job.split != "test" and params.label_noise > 0',
             (f"{T_WORLD}::test_label_noise_is_in_the_train_folders_only_and_at_its_rate",)),
    # -- the primary-category rule ------------------------------------------------------------------
    Mutation("primary-ties-to-earlier", PRIMARY, "kdlib/data/broden.py",
             "primary = len(self.categories) - 1 - np.argmax(coverage[::-1], axis=0)",
             "primary = np.argmax(coverage, axis=0)",
             (f"{T_BRODEN}::test_primary_category_is_where_a_label_covers_most_ties_to_the_later_category",)),
    Mutation("primary-zero-coverage-absent", PRIMARY, "kdlib/data/broden.py",
             'np.maximum(frame["coverage"].to_numpy(), 1e-12)', 'frame["coverage"].to_numpy()',
             (f"{T_BRODEN}::test_primary_category_is_where_a_label_covers_most_ties_to_the_later_category",)),
    # -- the references are independent of the engine --------------------------------------------------
    Mutation("engine-primary-first-present", REFERENCE, "kdlib/data/broden.py",
             "primary = len(self.categories) - 1 - np.argmax(coverage[::-1], axis=0)",
             "primary = np.argmax(coverage > 0, axis=0)",
             (ENGINE_VS_REFERENCE,)),
    Mutation("engine-upsampling-shifted", REFERENCE, "kdlib/dissect/upsample.py",
             "pos = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)",
             "pos = (torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)).clamp(min=0)",
             (ENGINE_VS_REFERENCE, f"{T_MASKS}::test_a_2x2_map_upsampled_onto_4x4_by_hand",
              f"{T_MASKS}::test_hand_worked_upsampled_iou_with_a_label_in_two_layers")),
    Mutation("engine-capture-rolls-units", REFERENCE, "kdlib/models/nethook.py",
             "out = output.detach() if self.detach else output",
             "out = (output.detach() if self.detach else output).roll(1, dims=1)",
             (ENGINE_VS_REFERENCE,)),
    # -- known answers for the losses ---------------------------------------------------------------------
    Mutation("fitnet-regressor-without-relu", LOSSES, "kdlib/losses/fitnet.py",
             "pad, uses_relu=True)", "pad, uses_relu=False)", (f"{T_KNOWN}::test_fitnet_hand_value",)),
    Mutation("ft-p2", LOSSES, "kdlib/losses/ft.py", "FTLoss(p=p, ", "FTLoss(p=2, ",
             (f"{T_KNOWN}::test_ft_hand_value_and_torchdistill",)),
    Mutation("crd-temperature-ignored", LOSSES, "kdlib/losses/crd.py",
             "temperature=self.nce_temperature,", "temperature=1.0,",
             (f"{T_KNOWN}::test_crd_hand_value_and_memory_update",)),
    Mutation("crd-negatives-of-any-class", LOSSES, "kdlib/losses/crd.py",
             "self.order[torch.where(r < start, r, r + count)]", "self.order[r]",
             (f"{T_KNOWN}::test_crd_negatives_are_other_classes_and_uniform",)),
    Mutation("sskd-weights-swapped", LOSSES, "kdlib/losses/sskd.py",
             "float(ss_weight), float(tf_weight)]", "float(tf_weight), float(ss_weight)]",
             (f"{T_KNOWN}::test_sskd_glue_equals_torchdistill_sskdloss",)),
    Mutation("at-paper-mode-ignored", LOSSES, "kdlib/losses/at.py", "mode=mode,", 'mode="code",',
             (f"{T_KNOWN}::test_at_paper_mode_hand_value",)),
    Mutation("kd-fixed-perm-forward-unpermuted", LOSSES, "kdlib/losses/kd_fixed_perm.py",
             "soft_kl(io.logits, permute_non_target(probs, destination), self.temperature)",
             "soft_kl(io.logits, probs, self.temperature)",
             (f"{T_KNOWN}::test_kd_fixed_perm_forward_hand_value",)),
    Mutation("kd-permuted-drawn-once", LOSSES, "kdlib/losses/kd_permuted.py",
             "destination = random_destinations(io.targets, probs.shape[1])",
             "destination = random_destinations(io.targets, probs.shape[1], torch.Generator().manual_seed(0))",
             (f"{T_KNOWN}::test_kd_permuted_is_kd_from_one_uniformly_drawn_permutation_drawn_afresh_each_step",)),
    # -- bounds: ceiling, single cues, hierarchy ------------------------------------------------------------
    Mutation("ceiling-ignores-scene", BOUNDS, "kdlib/data/ceiling.py",
             'like *= bias * (rec.scene.to_numpy() == scenes[c["home_scene"]]) + (1 - bias) / len(scenes)',
             "like *= 1.0",
             (f"{T_WORLD}::test_ceiling_and_single_cues_are_the_readmes_within_sampling_error",), slow=True),
    Mutation("single-cue-colour-fidelity-halved", BOUNDS, "kdlib/data/world.py",
             "colour = spec.colour if rng.random() < self.params.colour_fidelity else",
             "colour = spec.colour if rng.random() < 0.5 * self.params.colour_fidelity else",
             (f"{T_WORLD}::test_ceiling_and_single_cues_are_the_readmes_within_sampling_error",), slow=True),
    # siblings never share a shape, cousins do (a Latin square of the shapes): the hierarchy is inverted
    Mutation("hierarchy-siblings-other-shapes", BOUNDS, "kdlib/data/world.py",
             "body = render.shape_mask(spec.shape, u, v)",
             "body = render.shape_mask(self.onto.classes[(self.cls + self.params.subclasses * (self.cls % "
             "self.params.subclasses)) % len(self.onto.classes)].shape, u, v)",
             (f"{T_WORLD}::test_hierarchy_is_real_a_classifier_confuses_siblings_more_than_cousins",), slow=True),
    # -- assertions that say nothing ----------------------------------------------------------------------
    Mutation("git-commit-is-tree-hash", SAYS_NOTHING, "kdlib/runs/manifest.py",
             'commit = git("rev-parse", "HEAD")', 'commit = git("rev-parse", "HEAD^{tree}")',
             ("tests/test_runs.py::test_git_commit_is_head_and_dirty_only_for_tracked_changes",)),
    Mutation("cli-refusal-exit-1", SAYS_NOTHING, "kdlib/errors.py",
             'print(f"error: {exc}", file=sys.stderr)\n            raise SystemExit(2) from None',
             'print(f"error: {exc}", file=sys.stderr)\n            raise SystemExit(1) from None',
             ("tests/test_hostile.py::test_world_cli_refusals",)),
    Mutation("initial-network-ignores-seed", SAYS_NOTHING, "kdlib/train/session.py",
             'torch.manual_seed(derive(seed, "init"))', 'torch.manual_seed(derive(0, "init"))',
             ("tests/test_models.py::test_initial_network_depends_on_the_seed_alone",)),
    Mutation("graded-median-is-mean", SAYS_NOTHING, "kdlib/dissect/result.py",
             '"median_best_iou": best.median(axis=0)', '"median_best_iou": best.mean(axis=0)',
             (f"{T_DISSECT}::test_graded_measures_equal_an_independent_computation",)),
    Mutation("detectors-null-of-another-seed", SAYS_NOTHING, "kdlib/runs/steps.py",
             "return initial_network(self.instance.run, num_classes, self.seed).eval()",
             "return initial_network(self.instance.run, num_classes, self.seed + 1).eval()",
             ("tests/test_runs.py::test_detectors_table_is_a_direct_dissection_of_each_saved_network",), slow=True),
    # -- kill/resume and DataLoader workers ------------------------------------------------------------------
    Mutation("resume-without-scheduler-state", NARROW, "kdlib/train/session.py",
             'self.scheduler.load_state_dict(states[0]["scheduler_state"])', "pass  # mutation: scheduler not restored",
             ("tests/test_train.py::test_a_run_stopped_after_an_epoch_resumes_to_the_uninterrupted_weights",
              "tests/test_train.py::test_runs_killed_at_random_moments_resume_to_identical_weights"), slow=True),
    Mutation("train-workers-unseeded-order", NARROW, "kdlib/train/loaders.py",
             "shuffle=True, generator=generator, num_workers=num_workers,",
             "shuffle=True, generator=generator if num_workers == 0 else None, num_workers=num_workers,",
             ("tests/test_train_batches.py::test_dataloader_workers_change_no_weight[loader-False]",), slow=True),
    Mutation("dissect-workers-shuffle", NARROW, "kdlib/dissect/batches.py",
             "shuffle=False,", "shuffle=num_workers > 0,",
             (f"{T_INPUTS}::test_dataloader_workers_give_the_same_answer",), slow=True),
    # -- documented error paths -------------------------------------------------------------------------------
    Mutation("world-out-is-a-file", ERRORS, "kdlib/data/world.py", "if not out.is_dir():", "if False:",
             ("tests/test_hostile.py::test_world_cli_out_is_a_file",)),
    Mutation("world-workers-0", ERRORS, "kdlib/data/world.py", "args.workers < 1:", "args.workers < 0:",
             ("tests/test_hostile.py::test_world_cli_refusals[workers]",)),
    Mutation("negative-loss-weight", ERRORS, "kdlib/params/train.py",
             'not 0 <= weight < float("inf")', 'not -10 <= weight < float("inf")', (DOCUMENTED_TRAINING,)),
    Mutation("cuda-without-cuda", ERRORS, "kdlib/device.py", "if not torch.cuda.is_available():", "if False:",
             (DOCUMENTED_TRAINING,)),
    Mutation("missing-imagefolder", ERRORS, "kdlib/data/splits.py", "if not root.is_dir():", "if False:",
             (DOCUMENTED_TRAINING,)),
    Mutation("val-classes-differ", ERRORS, "kdlib/data/splits.py",
             "split.classes != train_set.classes", "len(split.classes) != len(train_set.classes)", (DOCUMENTED_TRAINING,)),
    Mutation("broden-layers-of-other-shapes", ERRORS, "kdlib/data/broden_format.py",
             "if layer.shape != (sh, sw):", "if False:",
             (f"{T_BRODEN}::test_writer_refuses_labels_above_65535_and_layers_of_other_shapes",)),
    Mutation("split-without-classes", ERRORS, "kdlib/data/imagefolder.py", "if not classes:", "if False:",
             ("tests/test_imagefolder.py::test_split_folder_with_no_classes",)),
    Mutation("dissect-examples-negative", ERRORS, "kdlib/params/dissect.py",
             "examples: int = knob(8, ge=0,", "examples: int = knob(8, ge=-64,",
             (f"{T_INPUTS}::test_overrides_are_validated_by_dissect_params",)),
    Mutation("mixed-segmentation-sizes", ERRORS, "kdlib/dissect/labels.py", "if len(sizes) > 1:", "if len(sizes) > 2:",
             (f"{T_INPUTS}::test_mixed_segmentation_sizes_in_one_batch_are_refused",)),
    Mutation("result-load-wrong-folder", ERRORS, "kdlib/dissect/result.py", "if not info_path.is_file():", "if False:",
             (f"{T_INPUTS}::test_result_load_refuses_the_wrong_folder",)),
    Mutation("layer-named-twice", ERRORS, "kdlib/models/nethook.py", "if dup:", "if False:",
             (f"{T_INPUTS}::test_a_layer_named_twice_is_refused",)),
    Mutation("broden-label-above-65535", ERRORS, "kdlib/data/broden_format.py",
             "labels.max(initial=0) >= 65536:", "labels.max(initial=0) >= 65537:",
             (f"{T_BRODEN}::test_writer_refuses_labels_above_65535_and_layers_of_other_shapes",)),
)


# --------------------------------------------------------------------------------------------
# Applying one mutation
# --------------------------------------------------------------------------------------------


def git_clean(path: str) -> bool:
    return subprocess.run(["git", "diff", "--quiet", "HEAD", "--", path], cwd=ROOT).returncode == 0


def check_mutation(m: Mutation) -> None:
    """The old text occurs exactly once in the file (else the table would lie)."""
    count = (ROOT / m.file).read_text(encoding="utf-8").count(m.old)
    if count != 1:
        raise SystemExit(f"mutation {m.id}: the old text occurs {count} times in {m.file}; valid: exactly once")


@dataclass
class Outcome:
    caught: bool
    detail: str
    seconds: float


def run_pytest(tests: tuple[str, ...], timeout_s: int) -> tuple[int | None, str]:
    """The tests in one pytest process in its own process group; ``(exit status or None on timeout, output)``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "PYTHONDONTWRITEBYTECODE": "1"}
    # an own --basetemp: pytest-of-<user>'s rotation is shared with test runs of other checkouts
    basetemp = Path(tempfile.gettempdir()) / f"kdlib-mutations-{os.getpid()}"
    cmd = [sys.executable, "-m", "pytest", *tests, "-x", "-q", "-p", "no:cacheprovider", "--tb=line", "-rfE",
           f"--basetemp={basetemp}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        shutil.rmtree(basetemp, ignore_errors=True)


def _short(path: str) -> str:
    """A path relative to the checkout when inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def describe(rc: int | None, out: str, timeout_s: int) -> tuple[bool, str]:
    """Whether the run shows the mutation caught, and which test failed where."""
    if rc is None:
        return False, f"NO: timed out after {timeout_s} s"
    failed = [line.split(" ", 1)[1].split(" - ")[0] for line in out.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    where = [f"{_short(p)}:{n}" for p, n in re.findall(r"^(\S+\.py):(\d+): ", out, flags=re.M)]
    if rc == 1 and failed:
        return True, "yes: " + ", ".join(t.split("/")[-1] for t in failed) + (f" (at {where[0]})" if where else "")
    if rc == 0:
        summary = re.findall(r"\d+ (?:passed|skipped)", out)
        return False, "NO: " + (", ".join(summary) or "tests passed")
    tail = " | ".join(out.strip().splitlines()[-3:])
    return False, f"NO: pytest exit status {rc} ({tail[:200]})"


def apply_and_test(m: Mutation) -> Outcome:
    """Mutate, run the tests, restore (always); the restored file must equal HEAD's."""
    path = ROOT / m.file
    if not git_clean(m.file):
        raise SystemExit(f"{m.file} has uncommitted changes; commit or stash them before mutating it")
    check_mutation(m)
    original = path.read_bytes()
    stat = path.stat()
    began = time.perf_counter()
    try:
        path.write_bytes(original.replace(m.old.encode(), m.new.encode(), 1))
        rc, out = run_pytest(m.tests, m.timeout_s)
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the unmutated bytecode stays valid
        if not git_clean(m.file):
            raise SystemExit(f"{m.file} could not be restored after mutation {m.id}; run git checkout -- {m.file}")
    caught, detail = describe(rc, out, m.timeout_s)
    return Outcome(caught, detail, time.perf_counter() - began)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _tests_cell(m: Mutation) -> str:
    return "<br>".join(t.replace("tests/", "") for t in m.tests)


def _name(m: Mutation) -> str:
    return f"`{m.id}`" + (" (slow)" if m.slow else "")


def list_table(mutations: list[Mutation]) -> str:
    rows = ["| mutation | weakness | file | old -> new | test(s) expected to catch it |", "|---|---|---|---|---|"]
    for m in mutations:
        change = f"`{_cell(m.old)}` -> `{_cell(m.new)}`"
        rows.append(f"| {_name(m)} | {m.weakness} | {m.file} | {change} | {_tests_cell(m)} |")
    return "\n".join(rows)


def result_table(results: list[tuple[Mutation, Outcome]]) -> str:
    rows = ["| mutation | weakness | test(s) run | caught? (which test failed) | seconds |", "|---|---|---|---|---|"]
    for m, o in results:
        rows.append(f"| {_name(m)} | {m.weakness} | {_tests_cell(m)} | {_cell(o.detail)} | {o.seconds:.0f} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------
# Counting the error messages tests quote
# --------------------------------------------------------------------------------------------


def _literal_parts(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    if isinstance(node, ast.BinOp):
        return _literal_parts(node.left) + _literal_parts(node.right)
    return []


def error_paths() -> tuple[int, int, list[str], list[str]]:
    """Every ``raise KdlibError(...)`` in kdlib, judged by the longest literal piece of its message (the
    ``; valid: ...`` tail cut off, it repeats across messages): quoted when that piece (8 characters or
    more) occurs in tests/ (searched also with regex backslashes removed), undecidable when the message has
    no literal piece that long (it is built from values). A proxy: a quoted message is asserted somewhere,
    not necessarily from this raise. Returns (sites, quoted, not quoted, undecidable), the last two as
    ``file:line piece``."""
    tests_text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "tests").glob("*.py")))
    tests_text += "\n" + tests_text.replace("\\", "")
    sites, quoted, missing, undecidable = 0, 0, [], []
    for path in sorted((ROOT / "kdlib").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args):
                continue
            if not (isinstance(node.exc.func, ast.Name) and node.exc.func.id == "KdlibError"):
                continue
            sites += 1
            pieces = [s.split("; valid:")[0].strip() for s in _literal_parts(node.exc.args[0])]
            piece = max(pieces, key=len, default="")
            where = f"{path.relative_to(ROOT)}:{node.lineno} {piece!r}"
            if len(piece) < 8:
                undecidable.append(where)
            elif piece in tests_text:
                quoted += 1
            else:
                missing.append(where)
    return sites, quoted, missing, undecidable


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def select(args) -> list[Mutation]:
    ids = [i for group in args.only for i in group.split(",") if i]
    known = {m.id: m for m in MUTATIONS}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise SystemExit(f"--only {unknown[0]!r} is not a mutation; valid: {', '.join(known)}")
    chosen = [known[i] for i in ids] if ids else list(MUTATIONS)
    return [m for m in chosen if not (args.quick and m.slow)]


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="print the mutations, run nothing")
    p.add_argument("--only", action="append", default=[], help="mutation id(s), repeatable or comma-separated")
    p.add_argument("--quick", action="store_true", help="leave out the mutations whose tests are slow")
    p.add_argument("--baseline", action="store_true", help="run the selected tests on the unmutated tree")
    p.add_argument("--error-paths", action="store_true", help="count the KdlibError messages tests quote")
    p.add_argument("--out", help="also write the table to this markdown file")
    args = p.parse_args(argv)
    if args.error_paths:
        sites, quoted, missing, undecidable = error_paths()
        print(f"{sites} `raise KdlibError` sites in kdlib/: {quoted} quoted in tests/, {len(missing)} not quoted, "
              f"{len(undecidable)} undecidable (too little literal text)")
        for title, items in (("not quoted", missing), ("undecidable", undecidable)):
            print(f"\n{title}:\n" + "\n".join(f"- {m}" for m in items))
        return 0
    chosen = select(args)
    for m in chosen:
        check_mutation(m)
    if args.list:
        print(list_table(chosen))
        return 0
    signal.signal(signal.SIGTERM, _on_sigterm)
    if args.baseline:
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        rc, out = run_pytest(tests, SLOW_TIMEOUT_S * 2)
        print(out.strip().splitlines()[-1] if out.strip() else "(no output)")
        return 0 if rc == 0 else 1
    began, results = time.perf_counter(), []
    for i, m in enumerate(chosen, start=1):
        print(f"[{i}/{len(chosen)}] {m.id} ...", file=sys.stderr, flush=True)
        results.append((m, apply_and_test(m)))
        print(f"    {results[-1][1].detail} ({results[-1][1].seconds:.0f} s)", file=sys.stderr, flush=True)
    table = result_table(results)
    survived = [m.id for m, o in results if not o.caught]
    footer = (f"\n\n{len(results) - len(survived)} of {len(results)} mutations caught in {time.perf_counter() - began:.0f} s"
              + (f"; survived: {', '.join(survived)}" if survived else ""))
    print(table + footer)
    if args.out:
        Path(args.out).write_text(table + footer + "\n", encoding="utf-8")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
