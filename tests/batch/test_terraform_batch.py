"""What the Terraform templates give batch scoring: prefixes the kit really uses, the execution role's and the
serving account's rights limited to them, the deployer allowed the kit's own jobs, Azure ML's batch cluster."""

from __future__ import annotations

import re

from test_terraform import _outputs, _policy, _variables, parse, resources


def test_aws_execution_role_reads_batch_input_writes_batch_output_and_nothing_more():
    from churnkit.batch.cloud import job_name
    from churnkit.batch.sagemaker import SageMakerBatch

    tree = parse("aws")
    execution = {s["sid"]: s for s in _policy(tree, "batch_execution")}
    assert execution["ReadBatchInput"]["actions"] == ["s3:GetObject"]
    assert execution["ReadBatchInput"]["resources"] == ["${local.batch_objects}/*/input/*"]
    assert execution["WriteBatchOutput"]["resources"] == ["${local.batch_objects}/*/output/*"]
    assert not [s for s in execution.values() if s["resources"] == ["*"] or any("*" == a[-1] for a in s["actions"])]
    locals_ = {k: v for block in tree["locals"] for k, v in block.items()}
    assert locals_["batch_objects"].endswith("/churnkit/batch")
    # the prefixes the kit stages to and reads from are the ones the policy names
    batch = SageMakerBatch.__new__(SageMakerBatch)
    batch.target = type("T", (), {"settings": {"bucket": "b"}})()
    job = job_name("churn", "3", "20261130-020000")
    assert batch.prefix(job) == f"s3://b/churnkit/batch/{job}"
    deployer = {s["sid"]: s for s in _policy(tree, "deployer_batch")}
    jobs = deployer["TransformJobs"]
    assert {"sagemaker:CreateTransformJob", "sagemaker:DescribeTransformJob", "sagemaker:StopTransformJob"} <= set(
        jobs["actions"])
    assert jobs["resources"] == ["${local.sagemaker}:transform-job/churnkit-*"] and job.startswith("churnkit-")
    assert deployer["StageBatchInput"]["actions"] == ["s3:PutObject"]
    assert deployer["ReadBatchOutput"]["actions"] == ["s3:GetObject"]
    assert _outputs(tree)["batch_prefix"]["value"].endswith("/churnkit/batch/")


def test_azure_batch_cluster_scales_to_zero_and_its_name_reaches_the_kit(monkeypatch):
    from churnkit.batch.azureml import AzureMLBatch

    tree = parse("azure")
    cluster = resources(tree)["azurerm_machine_learning_compute_cluster.batch"]
    scale = cluster["scale_settings"][0]
    assert scale["min_node_count"] == 0 and scale["max_node_count"] == "${var.batch_max_nodes}"
    assert cluster["local_auth_enabled"] is False and "identity" not in cluster  # no identity, so no role of its own
    assert _variables(tree)["batch_compute_name"]["default"] == "churnkit-batch"
    env = _outputs(tree)["churnkit_env"]["value"]
    assert "CHURNKIT_AZURE_BATCH_COMPUTE" in env
    target = type("T", (), {"_environ": {"CHURNKIT_AZURE_BATCH_COMPUTE": "cpu-batch"}})()
    assert AzureMLBatch(target).compute == "cpu-batch"
    assert AzureMLBatch(type("T", (), {"_environ": {}})()).compute == "churnkit-batch"


def test_gcp_serving_account_creates_objects_under_the_batch_prefix_only():
    tree = parse("gcp")
    grant = resources(tree)["google_storage_bucket_iam_member.serve_writes_batch_output"]
    assert grant["role"] == "roles/storage.objectCreator"
    expression = grant["condition"][0]["expression"]
    assert re.search(r'resource\.name\.startsWith\(\\?"projects/_/buckets/.+/objects/churnkit/batch/\\?"\)', expression)
    assert _outputs(tree)["batch_prefix"]["value"].endswith("/churnkit/batch/")
