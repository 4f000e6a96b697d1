import os

# Quiet TensorFlow's C++ start-up chatter (INFO/WARNING) for people reading the stage output;
# set at the entry point, never in the library.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.cli import main

main()
