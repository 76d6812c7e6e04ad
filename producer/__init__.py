"""Turn S3 event notifications (via SQS) and S3 listings into image messages on the detect queue.

Never imports an ML framework: it depends on ``workers.messages``, Celery, boto3 and the settings.
"""
