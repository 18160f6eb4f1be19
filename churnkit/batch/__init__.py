"""Batch scoring of a whole customer table: the clouds' batch services in ``churnkit.batch.sagemaker``,
``churnkit.batch.azureml`` and ``churnkit.batch.vertex`` (shared waiting and raw-output reading in
``churnkit.batch.cloud``)."""
