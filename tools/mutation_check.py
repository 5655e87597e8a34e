"""Apply named wrong changes to the GPU model, one at a time, in a scratch copy of the project, and run the tests of the
measurements and of the calibration against each: every one must be caught (a test must fail). It proves that the
byte-exact and calibrated claims are guarded, not merely true today. Not part of CI: it takes minutes.

usage: python tools/mutation_check.py [NAME ...]      (all mutations without names; exit 1 if one survives)

Each mutation replaces one exact text of one file (it must occur there exactly once, so that a refactoring that
moves the text makes this tool fail loudly instead of testing nothing), or scales one entry of the calibration.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("src", "tests", "tools", "docs", "images", "pyproject.toml")
# The tests that guard the model: measurements (to the byte), convolution tables, attention against the allocator
# trace, calibration, and the allocator's replay (split by pool) against its events one by one
TESTS = ("tests/test_measurements.py", "tests/test_workspaces.py", "tests/test_attention.py",
         "tests/test_calibrated.py", "tests/test_allocator.py")


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the project root
    old: str = ""
    new: str = ""
    scale_entry: tuple[str, tuple[int, ...], str] | None = None  # (dtype, sms, switches): its coefficients x 1.10

    def apply(self, root: Path) -> None:
        path = root / self.file
        if self.scale_entry is not None:
            document = json.loads(path.read_text())
            dtype, sms, switches = self.scale_entry
            [entry] = [e for e in document["entries"]
                       if (e["dtype"], tuple(e["sms"]), e["switches"]) == (dtype, sms, switches)]
            entry["fits"] = _scaled(entry["fits"], 1.10)
            path.write_text(json.dumps(document, separators=(",", ":")) + "\n")
            return
        text = path.read_text()
        if text.count(self.old) != 1:
            raise SystemExit(f"{self.name}: the text to change occurs {text.count(self.old)} times in {self.file}")
        path.write_text(text.replace(self.old, self.new))


def _scaled(value: object, factor: float) -> object:
    if isinstance(value, dict):
        return {k: _scaled(v, factor) for k, v in value.items()}
    if isinstance(value, list):
        return [_scaled(v, factor) for v in value]
    return value * factor if isinstance(value, float) else value


ALLOC, WORK, ATTN, GPUS = ("src/sdvram/allocator.py", "src/sdvram/workspaces.py", "src/sdvram/attention.py",
                           "src/sdvram/gpus.py")
MUTATIONS = (
    # the caching allocator (c10/cuda/CUDACachingAllocator.cpp)
    Mutation("allocator rounding 512 -> 256 bytes", ALLOC, "K_MIN_BLOCK_SIZE = 512", "K_MIN_BLOCK_SIZE = 256"),
    Mutation("small segments 2 MiB -> 4 MiB", ALLOC, "K_SMALL_BUFFER = 2_097_152", "K_SMALL_BUFFER = 4_194_304"),
    Mutation("large segments rounded to 1 MiB, not 2", ALLOC, "K_ROUND_LARGE = 2_097_152", "K_ROUND_LARGE = 1_048_576"),
    # the replay split by pool (AllocatorAccountant._replay_split): exact only where its conditions hold
    Mutation("replay split: small windows charged whether or not they fit", ALLOC,
             'if run[0] == "window" and pool and pool[-1] >> ADDRESS_BITS >= run[2]:', 'if run[0] == "window":'),
    Mutation("replay split: a pool's trajectory applied from any start", ALLOC,
             "found = {which: program.pools[which].get(keys[which]) for which in (True, False)}",
             "found = {which: next(iter(program.pools[which].values()), None) for which in (True, False)}"),
    Mutation("replay split: a trajectory applied to a shrunk block without its bound", ALLOC,
             "if size - new_size > bound:", "if False:"),
    Mutation("replay split: a trajectory moved past a free block of the same size", ALLOC,
             "if bisect_left(addresses, high) != bisect_right(addresses, low):", "if False:"),
    Mutation("replay split: the peak looked for after allocations that an allocation follows", ALLOC,
             'if event[0] == "alloc" and (i + 1 == len(events) or events[i + 1][0] != "alloc")]',
             'if event[0] == "alloc" and (i + 1 == len(events) or events[i + 1][0] == "alloc")]'),
    Mutation("replay split: two trajectories' peak kept by the other's id alone", ALLOC,
             "if known is not None and known[0] is large:", "if known is not None:"),
    Mutation("replay split: a bound read from a run's picks misses a free merged into the tail", ALLOC,
             "                tail_addr, tail_size = picked_addr, picked_size\n", "                pass\n"),
    Mutation("replay split: a run's picks note the request, not the block it was carved from", ALLOC,
             "(block.size + rest.size if rest is not None and not rest.allocated else block.size)", "(block.size)"),
    # cuBLAS and cuBLASLt workspaces
    Mutation("sm90 cuBLAS workspace halved", WORK, "CUBLAS_WORKSPACE_SM90 = 4096 * 1024 * 8",
             "CUBLAS_WORKSPACE_SM90 = 4096 * 1024 * 4"),
    Mutation("sm90 cuBLAS workspace = the other GPUs' size", WORK,
             "(CUBLAS_WORKSPACE_SM90 if sm == SM90 else CUBLAS_WORKSPACE_DEFAULT)", "CUBLAS_WORKSPACE_DEFAULT"),
    Mutation("no cuBLASLt workspace", WORK, "CUBLASLT_WORKSPACE = 1024 * 1024", "CUBLASLT_WORKSPACE = 0"),
    # cuDNN's convolution workspace, one mutation per rule of conv_workspace
    Mutation("transform without the engine's slack", WORK, "TRANSFORM_SLACK = 147", "TRANSFORM_SLACK = 0"),
    Mutation("transform without channel padding", WORK, "    return -(-channels // align) * align",
             "    return channels"),
    Mutation("transform without the filters", WORK, "    return size * (data + filters) + TRANSFORM_SLACK",
             "    return size * data + TRANSFORM_SLACK"),
    Mutation("1 x 1 convolutions transform too", WORK, "    if kh * kw == 1 or conv.groups != 1:",
             "    if conv.groups != 1:"),
    Mutation("narrow inputs never transform", WORK, "NARROW_INPUT_MIN_BATCH = 2", "NARROW_INPUT_MIN_BATCH = 99"),
    Mutation("downsamplers transform everything", WORK,
             "if conv.stride != (1, 1) and conv.padding == (0, 0) and conv.in_channels >= CHANNEL_ALIGNMENT:",
             "if False:"),
    Mutation("batch-2 upsampled convolutions transform everything", WORK,
             "if conv.after_upsample and n >= UPSAMPLED_MIN_BATCH and conv.in_channels <= UPSAMPLED_MAX_CHANNELS:",
             "if False:"),
    # the attention kernels
    Mutation("no cuDNN attention workspace", ATTN, "CUDNN_WORKSPACE = 256", "CUDNN_WORKSPACE = 0"),
    Mutation("flash before cuDNN on sm90", ATTN, "CUDNN_PREFERRED_MAJORS = (9, 10)", "CUDNN_PREFERRED_MAJORS = (10,)"),
    # the bounds' walk over the small pool's windows (_Plan.walked): a window is passed over only within its stretch
    Mutation("a walk passes over a window repeated after events outside a window", ALLOC,
             "            else:\n                stretch.clear()", "            else:\n                pass"),
    # the views the meter lets pass unseen (meters.UNSEEN_VIEWS): only views whose outputs add nothing
    Mutation("the meter lets a concatenation pass unseen", "src/sdvram/meters.py",
             "passed = [view for view in views if self._plain_view(view)]",
             "passed = [*views, torch.ops.aten.cat.default]"),
    # the CUDA context nvidia-smi adds
    Mutation("CUDA context 2 MiB smaller", GPUS, "H200_CONTEXT = 721_420_288", "H200_CONTEXT = 719_323_136"),
    # the calibration's default entry: what `sdvram estimate` answers with no options
    Mutation("calibrated default entry x 1.10", "src/sdvram/data/calibration.json",
             scale_entry=("float16", (90,), "none")),
)


def scratch_copy() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="sdvram-mutation-"))
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, folder / name)
    return folder


def run_tests(root: Path) -> tuple[bool, str]:
    """Run the guarding tests in ``root`` with its own sources first on the path; (caught, the first failure)."""
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    check = "import sdvram, sys; sys.exit(0 if sdvram.__file__.startswith(sys.argv[1]) else 1)"
    if subprocess.run([sys.executable, "-c", check, str(root)], env=env, cwd=root).returncode:
        raise SystemExit("the scratch copy's sources do not come first on the path: the check would test main")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TESTS],
                          env=env, cwd=root, capture_output=True, text=True)
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    return proc.returncode != 0, (failed[0].removeprefix("FAILED ") if failed else proc.stdout.strip()[-200:])


def main(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    if names and len(chosen) != len(names):
        raise SystemExit(f"unknown mutation; known: {', '.join(m.name for m in MUTATIONS)}")
    survivors = 0
    print(f"{len(chosen)} mutations; tests: {' '.join(TESTS)}", flush=True)
    for mutation in chosen:
        root = scratch_copy()
        try:
            mutation.apply(root)
            started = time.perf_counter()
            caught, detail = run_tests(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        survivors += not caught
        verdict = "caught" if caught else "SURVIVED"
        print(f"{verdict:8} {mutation.name} ({time.perf_counter() - started:.0f} s): {detail}", flush=True)
    print(f"{len(chosen) - survivors} of {len(chosen)} caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
