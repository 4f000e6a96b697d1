import logging
import os
import sys

# Quiet TensorFlow's C++ start-up chatter (INFO/WARNING) for people reading the stage output;
# set at the entry point, never in the library.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.cli import main

try:
    main()  # click ends every command with SystemExit, also on success
except SystemExit as finished:
    code = finished.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    if "tensorflow" in sys.modules:
        # A process that imported TensorFlow spends about 1.3 s tearing its modules down at exit
        # (benchmarks/, repro section), paid by every train, evaluate and register stage. The command
        # has finished: its files are written and renamed, its MLflow run ended, its locks released.
        # So flush what is buffered and leave without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code or 0)
    sys.exit(code)
