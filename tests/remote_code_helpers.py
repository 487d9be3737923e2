"""Shared by the pipeline tests: a handler that records the errors logged in this process (`ErrorRecorder`); the
start of a script run with `python -c` where paca_hf cannot be imported (`paca_hf.hub.hidden_package_environment`):
it stops if paca_hf is importable, imports numpy, PIL and `transformers.pipeline`, and collects every error logged
(by transformers or anything else) in `errors.messages`."""

import logging


class ErrorRecorder(logging.Handler):
    """Keeps `"logger name: message"` of every record of level ERROR or above it handles, in `messages`."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.messages = []

    def emit(self, record):
        self.messages.append(f"{record.name}: {record.getMessage()}")


REMOTE_SCRIPT_PROLOGUE = """
import logging, sys
try:
    import paca_hf
except ImportError:
    pass
else:
    sys.exit("paca_hf must not be importable here")
import numpy as np
from PIL import Image
from transformers import pipeline
from transformers.utils import logging as transformers_logging

class Errors(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

errors = Errors()
transformers_logging.get_logger("transformers").addHandler(errors)
logging.getLogger().addHandler(errors)
"""
