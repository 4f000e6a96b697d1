"""What a stage prints: its own progress and result lines, not TensorFlow's start-up chatter.

TensorFlow's C++ code writes to file descriptor 2 directly, some of it before its logging is set up
(`WARNING: All log messages before absl::InitializeLog()`, `cudart_stub.cc ... Could not find cuda
drivers`, `cuInit`), where neither TF_CPP_MIN_LOG_LEVEL nor any absl variable reaches. So the entry
point routes fd 2 through a filter that drops those lines and passes everything else unchanged.
`--verbose` or PIPELINE_VERBOSE=1 turns all of this off.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings

# absl/glog lines ("I0000 00:00:1796234720.866728    6005 cudart_stub.cc:31] ...") and their preamble;
# oneDNN's notice at import.
NATIVE_NOISE = re.compile(
    rb"^(?:[IWEF]\d{4} [\d:.]+\s+\d+ [\w.\-/]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|.*oneDNN custom operations are on"
    rb"|.*This TensorFlow binary is optimized to use available CPU instructions"
    rb"|To enable the following instructions: .* rebuild TensorFlow)")


def verbose_requested() -> bool:
    return os.environ.get("PIPELINE_VERBOSE", "").lower() in ("1", "true", "yes")


class _NativeStderrFilter:
    """fd 2 -> a pipe -> a thread that forwards every line but NATIVE_NOISE to the real stderr."""

    def __init__(self) -> None:
        self._original = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(target=self._pump, args=(read_end,), name="stderr-filter", daemon=True)
        self._thread.start()

    def _pump(self, read_end: int) -> None:
        with os.fdopen(read_end, "rb", buffering=0) as source:
            for line in source:
                if not NATIVE_NOISE.match(line):
                    os.write(self._original, line)

    def close(self) -> None:
        """Put the real stderr back and let the thread forward what is still in the pipe."""
        sys.stderr.flush()
        os.dup2(self._original, 2)  # closes the pipe's last write end in this process: the thread sees EOF
        self._thread.join(timeout=5)  # a subprocess that inherited the pipe could keep it open; do not hang


_filter: _NativeStderrFilter | None = None


def quiet_tensorflow() -> None:
    """Hide TensorFlow's start-up lines, absl warnings, tf.function retracing warnings and MLflow's
progress bars and INFO lines (entry points only)."""
    global _filter
    if verbose_requested():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts: 14%|..."
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # "... triggered tf.function retracing"
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    warnings.filterwarnings("ignore", module=r"(tensorflow|keras|absl)(\..*)?")
    if _filter is None:
        _filter = _NativeStderrFilter()


def restore_stderr() -> None:
    """Undo the filter of `quiet_tensorflow` (before the process exits, so nothing is lost)."""
    global _filter
    if _filter is not None:
        _filter.close()
        _filter = None
