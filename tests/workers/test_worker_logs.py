"""workers/logs.py: each task's log lines name its id, and its image's bucket and key."""

from __future__ import annotations


def test_worker_task_context_names_the_image_of_detect_and_classify_messages():
    from vehicle_core.logs import current_context
    from workers.logs import bind_task, task_fields, unbind_task

    assert task_fields("t", [{"bucket": "b", "key": "k.jpg", "etag": "e"}]) == {"task_id": "t", "bucket": "b",
                                                                                "key": "k.jpg"}
    assert task_fields("t", [{"source": {"bucket": "b", "key": "c.jpg"}, "crops": []}])["key"] == "c.jpg"
    assert task_fields("t", [[1, 2]]) == {"task_id": "t"}  # a batch: the task id only
    bind_task("t9", [{"bucket": "b", "key": "k.jpg"}])
    assert current_context() == {"task_id": "t9", "bucket": "b", "key": "k.jpg"}
    unbind_task("t9")
    assert current_context() == {}
