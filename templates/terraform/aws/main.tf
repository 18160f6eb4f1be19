# What the churnkit `sagemaker` deploy target needs on AWS, least privilege:
# an S3 bucket (model archives, data capture), an ECR repository (the serving image), the SageMaker
# execution role, the CloudWatch alarms the guardrails roll back on, and optionally the endpoint itself.
#
#   terraform init && terraform apply -var region=eu-west-1
#   eval "$(terraform output -raw churnkit_env)"      # CHURNKIT_AWS_* and AWS_REGION for churnkit
#
# churnkit deploy changes the endpoint's config (new variants, weights); the endpoint below ignores
# that change so Terraform and the kit do not fight over it.

terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 6.0"
    }
  }
}

provider "aws" {
  region = var.region
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  partition = data.aws_partition.current.partition
  bucket    = var.bucket_name != "" ? var.bucket_name : "${var.name}-${local.account}-${var.region}"
  image_uri = "${aws_ecr_repository.serve.repository_url}:${var.image_tag}"
  tags      = merge({ "churnkit:project" = var.name }, var.tags)
  alarms = {
    latency = "${var.endpoint_name}-${var.variant_name}-model-latency-p99"
    errors  = "${var.endpoint_name}-${var.variant_name}-invocation-5xx"
  }
}

# ---- storage: model archives (churnkit/models/) and data capture (churnkit/capture/) -----------------
resource "aws_s3_bucket" "churnkit" {
  bucket        = local.bucket
  force_destroy = var.force_destroy
  tags          = local.tags
}

resource "aws_s3_bucket_public_access_block" "churnkit" {
  bucket                  = aws_s3_bucket.churnkit.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "churnkit" {
  bucket = aws_s3_bucket.churnkit.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_versioning" "churnkit" {
  bucket = aws_s3_bucket.churnkit.id

  versioning_configuration {
    status = "Enabled"
  }
}

# ---- the serving image --------------------------------------------------------------------------
resource "aws_ecr_repository" "serve" {
  name                 = "${var.name}-serve"
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.force_destroy
  tags                 = local.tags

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "AES256"
  }
}

resource "aws_ecr_lifecycle_policy" "serve" {
  repository = aws_ecr_repository.serve.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "keep the last 30 images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 30 }
      action       = { type = "expire" }
    }]
  })
}

# ---- the SageMaker execution role: read models, write capture, pull the image, write logs ---------
data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["sagemaker.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "ReadModelArchives"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.churnkit.arn}/churnkit/models/*"]
  }

  statement {
    sid       = "WriteDataCapture"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.churnkit.arn}/churnkit/capture/*"]
  }

  statement {
    sid       = "ListKitPrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.churnkit.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["churnkit/*"]
    }
  }

  statement {
    sid       = "PullServingImage"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = [aws_ecr_repository.serve.arn]
  }

  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # an account-level action: it has no resource to scope to
  }

  statement {
    sid       = "EndpointLogs"
    actions   = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["arn:${local.partition}:logs:${var.region}:${local.account}:log-group:/aws/sagemaker/Endpoints/${var.endpoint_name}*"]
  }

  statement {
    sid     = "GuardrailAlarms"
    actions = ["cloudwatch:DescribeAlarms"]
    # SageMaker reads a guarded update's auto-rollback alarms as the endpoint's execution role
    # (https://docs.aws.amazon.com/sagemaker/latest/dg/deployment-guardrails-configuration.html)
    resources = ["arn:${local.partition}:cloudwatch:${var.region}:${local.account}:alarm:${var.endpoint_name}-*"]
  }

  statement {
    sid       = "EndpointMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"] # PutMetricData has no resource ARN; the condition scopes it to two namespaces

    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = ["/aws/sagemaker/Endpoints", "churnkit"]
    }
  }
}

resource "aws_iam_role" "sagemaker" {
  name               = "${var.name}-sagemaker-execution"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "sagemaker" {
  name   = "${var.name}-sagemaker-execution"
  role   = aws_iam_role.sagemaker.id
  policy = data.aws_iam_policy_document.execution.json
}

# ---- the alarms SageMaker's guardrails roll back on (same names churnkit creates) ------------------
# They watch the new fleet only: CloudWatch adds EndpointConfigName to its metrics once it takes traffic, and an
# alarm the old fleet trips ends the deployment (deployment-guardrails-configuration.html). The name is the
# endpoint configuration's below.
locals {
  new_fleet = { EndpointName = var.endpoint_name, VariantName = var.variant_name,
  EndpointConfigName = "${var.endpoint_name}-v${var.model_version}" }
}

resource "aws_cloudwatch_metric_alarm" "model_latency_p99" {
  alarm_name          = local.alarms.latency
  alarm_description   = "churnkit: p99 model latency above ${var.p99_latency_ms} ms"
  namespace           = "AWS/SageMaker"
  metric_name         = "ModelLatency"
  extended_statistic  = "p99"
  period              = 60
  evaluation_periods  = 2
  datapoints_to_alarm = 2
  threshold           = var.p99_latency_ms * 1000 # ModelLatency is in microseconds
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  actions_enabled     = false
  dimensions          = local.new_fleet
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "invocation_5xx" {
  alarm_name          = local.alarms.errors
  alarm_description   = "churnkit: ${var.max_5xx} or more 5xx responses in a minute"
  namespace           = "AWS/SageMaker"
  metric_name         = "Invocation5XXErrors"
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 1
  threshold           = var.max_5xx
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  actions_enabled     = false
  dimensions          = local.new_fleet
  tags                = local.tags
}

# ---- optional: the endpoint itself, with blue/green guardrails -------------------------------------
resource "aws_sagemaker_model" "churn" {
  count              = var.create_endpoint ? 1 : 0
  name               = "${var.name}-v${var.model_version}"
  execution_role_arn = aws_iam_role.sagemaker.arn
  tags               = local.tags

  primary_container {
    image          = local.image_uri
    model_data_url = var.model_data_url
    environment = {
      CHURNKIT_MODEL_VERSION = var.model_version
    }
  }

  lifecycle {
    precondition {
      condition     = startswith(var.model_data_url, "s3://")
      error_message = "create_endpoint needs model_data_url: the s3:// URL of a model.tar.gz exported by churnkit."
    }
  }
}

resource "aws_sagemaker_endpoint_configuration" "churn" {
  count = var.create_endpoint ? 1 : 0
  name  = "${var.endpoint_name}-v${var.model_version}"
  tags  = local.tags

  production_variants {
    variant_name           = var.variant_name
    model_name             = aws_sagemaker_model.churn[0].name
    initial_instance_count = var.instance_count
    instance_type          = var.instance_type
    initial_variant_weight = 1
  }

  data_capture_config {
    enable_capture              = true
    initial_sampling_percentage = 100
    destination_s3_uri          = "s3://${aws_s3_bucket.churnkit.id}/churnkit/capture/${var.endpoint_name}"

    capture_options {
      capture_mode = "Input"
    }

    capture_options {
      capture_mode = "Output"
    }

    capture_content_type_header {
      json_content_types = ["application/json"]
      csv_content_types  = ["text/csv"]
    }
  }
}

resource "aws_sagemaker_endpoint" "churn" {
  count                = var.create_endpoint ? 1 : 0
  name                 = var.endpoint_name
  endpoint_config_name = aws_sagemaker_endpoint_configuration.churn[0].name
  tags                 = local.tags

  deployment_config {
    blue_green_update_policy {
      maximum_execution_timeout_in_seconds = var.max_execution_seconds

      traffic_routing_configuration {
        type                     = "CANARY"
        wait_interval_in_seconds = var.bake_seconds

        canary_size {
          type  = "CAPACITY_PERCENT"
          value = var.canary_percent
        }
      }
    }

    auto_rollback_configuration {
      alarms {
        alarm_name = aws_cloudwatch_metric_alarm.model_latency_p99.alarm_name
      }

      alarms {
        alarm_name = aws_cloudwatch_metric_alarm.invocation_5xx.alarm_name
      }
    }
  }

  lifecycle {
    ignore_changes = [endpoint_config_name] # churnkit deploy moves the endpoint to new configs
  }
}
