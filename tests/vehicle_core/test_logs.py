"""vehicle_core/logs.py: JSON lines with the task's context; text lines with it appended."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest

from vehicle_core.cli.errors import log_format
from vehicle_core.logs import ContextFilter, JsonFormatter, TextFormatter, apply_format, log_context


def _logger(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    apply_format([handler], fmt)
    logger = logging.getLogger(f"test-logs-{fmt}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel("INFO")
    return logger, out


def test_json_lines_carry_task_id_bucket_and_key_inside_the_context_only():
    logger, out = _logger("json")
    with log_context(task_id="t-1", bucket="cams", key="a b.jpg"):
        logger.info("classified %d vehicles", 2)
    logger.warning("outside")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "classified 2 vehicles" and first["level"] == "INFO"
    assert (first["task_id"], first["bucket"], first["key"]) == ("t-1", "cams", "a b.jpg")
    assert first["time"].endswith("+00:00")
    assert "task_id" not in second and second["message"] == "outside"


def test_exceptions_become_one_json_field():
    logger, out = _logger("json")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    (doc,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert "ValueError: boom" in doc["exception"]


def test_text_lines_append_the_context():
    logger, out = _logger("text")
    with log_context(task_id="t-2", key="k.jpg", bucket=None):
        logger.info("hello")
    assert out.getvalue().rstrip().endswith("hello task_id=t-2 key=k.jpg")


def test_each_thread_has_its_own_context():
    seen = {}

    def work(name):
        with log_context(task_id=name):
            record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
            ContextFilter().filter(record)
            seen[name] = record.context["task_id"]

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": "a", "b": "b"}


def test_log_format_option_accepts_text_and_json_only():
    import argparse

    assert log_format("JSON") == "json"
    with pytest.raises(argparse.ArgumentTypeError):
        log_format("xml")
    assert isinstance(JsonFormatter(), logging.Formatter) and isinstance(TextFormatter(), logging.Formatter)



def test_a_command_line_process_logs_json_lines_to_stderr():
    import subprocess
    import sys

    code = ("import logging; from vehicle_core.cli.errors import configure_logging; "
            "from vehicle_core.logs import log_context; configure_logging('INFO', 'json'); "
            "exec('with log_context(bucket=\"b\", key=\"k.jpg\"):\\n logging.getLogger(\"producer.listen\").info(\"enqueued\")')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    (doc,) = [json.loads(line) for line in out.stderr.splitlines()]
    assert (doc["logger"], doc["message"], doc["bucket"], doc["key"]) == ("producer.listen", "enqueued", "b", "k.jpg")
