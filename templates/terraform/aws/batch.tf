# Batch scoring on SageMaker Batch Transform (churnkit score --target sagemaker). The kit stages each job's
# input under churnkit/batch/<job>/input/ of the bucket and Batch Transform writes the .out files under
# churnkit/batch/<job>/output/. The execution role (what the transform job runs as) reads that input and
# writes that output, and logs to the TransformJobs log group; nothing else. The deployer may start,
# describe and stop the kit's transform jobs (named churnkit-*), stage their input, read their output and
# read their logs (the first lines a failed job logged).

locals {
  batch_objects = "${aws_s3_bucket.churnkit.arn}/churnkit/batch"
  transform_log = "arn:${local.partition}:logs:${var.region}:${local.account}:log-group:/aws/sagemaker/TransformJobs"
}

data "aws_iam_policy_document" "batch_execution" {
  statement {
    sid       = "ReadBatchInput"
    actions   = ["s3:GetObject"]
    resources = ["${local.batch_objects}/*/input/*"]
  }

  statement {
    sid       = "WriteBatchOutput"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = ["${local.batch_objects}/*/output/*"]
  }

  statement {
    sid       = "ListBatchPrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.churnkit.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["churnkit/batch/*"]
    }
  }

  statement {
    sid       = "TransformJobLogs"
    actions   = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${local.transform_log}:*"]
  }
}

resource "aws_iam_role_policy" "sagemaker_batch" {
  name   = "${var.name}-sagemaker-batch"
  role   = aws_iam_role.sagemaker.id
  policy = data.aws_iam_policy_document.batch_execution.json
}

data "aws_iam_policy_document" "deployer_batch" {
  statement {
    sid = "TransformJobs"
    actions = [
      "sagemaker:CreateTransformJob", "sagemaker:DescribeTransformJob", "sagemaker:StopTransformJob",
      "sagemaker:AddTags",
    ]
    resources = ["${local.sagemaker}:transform-job/churnkit-*"]
  }

  statement {
    sid       = "StageBatchInput"
    actions   = ["s3:PutObject"]
    resources = ["${local.batch_objects}/*/input/*"]
  }

  statement {
    sid       = "ReadBatchOutput"
    actions   = ["s3:GetObject"]
    resources = ["${local.batch_objects}/*/output/*"]
  }

  statement {
    sid       = "ListBatchPrefixAndRegion"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.churnkit.arn]
  }

  statement {
    sid       = "ReadTransformJobLogs"
    actions   = ["logs:FilterLogEvents"]
    resources = ["${local.transform_log}:*"]
  }
}

resource "aws_iam_role_policy" "deployer_batch" {
  name   = "${var.name}-deployer-batch"
  role   = aws_iam_role.deployer.id
  policy = data.aws_iam_policy_document.deployer_batch.json
}

output "batch_prefix" {
  description = "Where churnkit score --target sagemaker stages each job's input and Batch Transform writes its .out files (<prefix><job>/input/, <prefix><job>/output/)."
  value       = "s3://${aws_s3_bucket.churnkit.id}/churnkit/batch/"
}
