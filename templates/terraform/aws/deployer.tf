# The identity that deploys, rolls out and watches the endpoint: CI jobs (GitHub Actions, GitLab CI, Azure
# DevOps through OIDC, no stored key) and engineers (deployer_principals). Least privilege for what churnkit
# does: upload model archives, create models/configs and update this endpoint, pass the execution role (and
# only it) to SageMaker, read the endpoint's metrics and data capture for the rollout checks and latency
# diagnosis, publish the kit's drift metric, manage the alarms and the variants' autoscaling, push the
# serving image.
#
#   terraform apply -var github_repository=acme/churn            # or gitlab_project / azure_devops_*
#   terraform output deployer_role_arn                            # AWS_ROLE_ARN of the CI templates

locals {
  github_host = "token.actions.githubusercontent.com"
  gitlab_host = trimprefix(var.gitlab_url, "https://")
  ado_host    = "vstoken.dev.azure.com/${var.azure_devops_organization_id}"
  oidc = {
    github = var.github_repository != "" ? {
      url      = "https://${local.github_host}"
      host     = local.github_host
      audience = "sts.amazonaws.com"
      subjects = ["repo:${var.github_repository}:${var.github_subject}"]
    } : null
    gitlab = var.gitlab_project != "" ? {
      url      = var.gitlab_url
      host     = local.gitlab_host
      audience = "sts.amazonaws.com"
      subjects = ["project_path:${var.gitlab_project}:ref_type:branch:ref:${var.gitlab_branch}"]
    } : null
    azure_devops = var.azure_devops_organization_id != "" ? {
      url      = "https://${local.ado_host}"
      host     = local.ado_host
      audience = "api://AzureADTokenExchange"
      subjects = ["sc://${var.azure_devops_organization}/${var.azure_devops_project}/${var.azure_devops_service_connection}"]
    } : null
  }
  oidc_enabled = { for k, v in local.oidc : k => v if v != null }
  arn          = "arn:${local.partition}"
  sagemaker    = "${local.arn}:sagemaker:${var.region}:${local.account}"
}

resource "aws_iam_openid_connect_provider" "ci" {
  for_each       = { for k, v in local.oidc_enabled : k => v if !contains(keys(var.existing_oidc_provider_arns), k) }
  url            = each.value.url
  client_id_list = [each.value.audience]
  tags           = local.tags
}

data "aws_iam_policy_document" "deployer_trust" {
  dynamic "statement" {
    for_each = local.oidc_enabled
    content {
      sid     = "Oidc${replace(title(replace(statement.key, "_", " ")), " ", "")}"
      actions = ["sts:AssumeRoleWithWebIdentity"]

      principals {
        type        = "Federated"
        identifiers = [lookup(var.existing_oidc_provider_arns, statement.key, try(aws_iam_openid_connect_provider.ci[statement.key].arn, ""))]
      }

      condition {
        test     = "StringEquals"
        variable = "${statement.value.host}:aud"
        values   = [statement.value.audience]
      }

      condition {
        test     = "StringLike"
        variable = "${statement.value.host}:sub"
        values   = statement.value.subjects
      }
    }
  }

  # Engineers: the principals named, else anyone in this account whose own policy allows sts:AssumeRole on it.
  statement {
    sid     = "Engineers"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "AWS"
      identifiers = length(var.deployer_principals) > 0 ? var.deployer_principals : ["${local.arn}:iam::${local.account}:root"]
    }
  }
}

data "aws_iam_policy_document" "deployer" {
  statement {
    sid = "EndpointLifecycle"
    actions = [
      "sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint", "sagemaker:UpdateEndpointWeightsAndCapacities",
      "sagemaker:DescribeEndpoint", "sagemaker:DeleteEndpoint", "sagemaker:InvokeEndpoint",
      "sagemaker:CreateEndpointConfig", "sagemaker:DescribeEndpointConfig", "sagemaker:DeleteEndpointConfig",
      "sagemaker:CreateModel", "sagemaker:DescribeModel", "sagemaker:DeleteModel",
      "sagemaker:AddTags", "sagemaker:ListTags",
    ]
    resources = [
      "${local.sagemaker}:endpoint/${var.endpoint_name}",
      "${local.sagemaker}:endpoint-config/${var.endpoint_name}-*",
      "${local.sagemaker}:model/${var.model_name}-*",
      "${local.sagemaker}:model/${var.name}-*",
    ]
  }

  statement {
    sid       = "ListEndpoints"
    actions   = ["sagemaker:ListEndpoints", "sagemaker:ListEndpointConfigs", "sagemaker:ListModels"]
    resources = ["*"] # list actions have no resource to scope to
  }

  statement {
    sid       = "PassExecutionRoleOnly"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.sagemaker.arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["sagemaker.amazonaws.com"]
    }
  }

  statement {
    sid       = "UploadModelArchives"
    actions   = ["s3:PutObject", "s3:GetObject"]
    resources = ["${aws_s3_bucket.churnkit.arn}/churnkit/models/*"]
  }

  statement {
    sid       = "ReadDataCapture"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.churnkit.arn}/churnkit/capture/${var.endpoint_name}/*"]
  }

  statement {
    sid       = "ListKitPrefixes"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.churnkit.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["churnkit/models/*", "churnkit/capture/${var.endpoint_name}/*", "churnkit/capture/${var.endpoint_name}"]
    }
  }

  statement {
    sid       = "ReadMetrics"
    actions   = ["cloudwatch:GetMetricData", "cloudwatch:ListMetrics"]
    resources = ["*"] # metric reads have no resource ARN
  }

  statement {
    sid       = "PublishKitMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"] # PutMetricData has no resource ARN; the condition scopes it to the kit's namespace

    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = ["churnkit"]
    }
  }

  statement {
    sid     = "GuardrailAlarms"
    actions = ["cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms", "cloudwatch:DeleteAlarms"]
    resources = [
      "${local.arn}:cloudwatch:${var.region}:${local.account}:alarm:${var.endpoint_name}-*",
      # target tracking creates and deletes its own alarms in the caller's name
      "${local.arn}:cloudwatch:${var.region}:${local.account}:alarm:TargetTracking-endpoint/${var.endpoint_name}/*",
    ]
  }

  statement {
    sid = "VariantAutoscaling"
    actions = [
      "application-autoscaling:RegisterScalableTarget", "application-autoscaling:DeregisterScalableTarget",
      "application-autoscaling:PutScalingPolicy", "application-autoscaling:DeleteScalingPolicy",
    ]
    # scalable targets are named by generated ids, not by endpoint: the account's targets in this region
    resources = ["${local.arn}:application-autoscaling:${var.region}:${local.account}:scalable-target/*"]
  }

  statement {
    sid = "DescribeAutoscaling"
    actions = [
      "application-autoscaling:DescribeScalableTargets", "application-autoscaling:DescribeScalingPolicies",
      "application-autoscaling:DescribeScalingActivities",
    ]
    resources = ["*"] # describe actions have no resource to scope to
  }

  statement {
    sid       = "AutoscalingServiceRole"
    actions   = ["iam:CreateServiceLinkedRole"]
    resources = ["${local.arn}:iam::${local.account}:role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/*"]

    condition {
      test     = "StringEquals"
      variable = "iam:AWSServiceName"
      values   = ["sagemaker.application-autoscaling.amazonaws.com"]
    }
  }

  statement {
    sid = "PushServingImage"
    actions = [
      "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload",
      "ecr:PutImage", "ecr:BatchGetImage", "ecr:DescribeImages",
    ]
    resources = [aws_ecr_repository.serve.arn]
  }

  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # an account-level action: it has no resource to scope to
  }
}

resource "aws_iam_role" "deployer" {
  name                 = "${var.name}-deployer"
  description          = "churnkit: deploy, roll out and monitor the ${var.endpoint_name} endpoint"
  assume_role_policy   = data.aws_iam_policy_document.deployer_trust.json
  max_session_duration = var.deployer_session_seconds
  tags                 = local.tags
}

resource "aws_iam_role_policy" "deployer" {
  name   = "${var.name}-deployer"
  role   = aws_iam_role.deployer.id
  policy = data.aws_iam_policy_document.deployer.json
}
