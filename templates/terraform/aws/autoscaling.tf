# Autoscaling of the endpoint's production variant (with create_endpoint): Application Auto Scaling keeps the
# variant's instance count between min_instances and max_instances, tracking invocations per instance.
# Size target_invocations_per_instance with `churnkit loadtest` (requests per minute one instance serves
# within your latency budget, times a safety factor of about 0.5).
#
# Variants churnkit deploy adds later (v<version>) are registered the same way by pointing variant_name at
# them and applying again, or with the AWS CLI (the deployer role may do both).

resource "aws_appautoscaling_target" "variant" {
  count              = var.create_endpoint ? 1 : 0
  service_namespace  = "sagemaker"
  resource_id        = "endpoint/${aws_sagemaker_endpoint.churn[0].name}/variant/${var.variant_name}"
  scalable_dimension = "sagemaker:variant:DesiredInstanceCount"
  min_capacity       = var.min_instances
  max_capacity       = var.max_instances

  lifecycle {
    precondition {
      condition     = var.min_instances <= var.instance_count && var.instance_count <= var.max_instances
      error_message = "instance_count must lie between min_instances and max_instances."
    }
  }
}

resource "aws_appautoscaling_policy" "invocations" {
  count              = var.create_endpoint ? 1 : 0
  name               = "${var.endpoint_name}-${var.variant_name}-invocations-per-instance"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.variant[0].service_namespace
  resource_id        = aws_appautoscaling_target.variant[0].resource_id
  scalable_dimension = aws_appautoscaling_target.variant[0].scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.target_invocations_per_instance
    scale_in_cooldown  = var.scale_in_cooldown_seconds
    scale_out_cooldown = var.scale_out_cooldown_seconds

    predefined_metric_specification {
      predefined_metric_type = "SageMakerVariantInvocationsPerInstance"
    }
  }
}
