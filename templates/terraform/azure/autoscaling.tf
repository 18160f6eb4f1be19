# Autoscaling of an online deployment with Azure Monitor: churnkit deploy creates one deployment per model
# version (v<version>); name the one to scale in autoscale_deployment and apply (again after a promotion).
# Scale out when average CPU is above cpu_scale_out_percent, in when below cpu_scale_in_percent, between
# min_instances and max_instances, one instance at a time with the cooldowns given.

locals {
  deployment_id = var.create_endpoint && var.autoscale_deployment != "" ? "${azapi_resource.endpoint[0].id}/deployments/${var.autoscale_deployment}" : ""
}

resource "azurerm_monitor_autoscale_setting" "deployment" {
  count               = local.deployment_id != "" ? 1 : 0
  name                = "autoscale-${local.endpoint_name}-${var.autoscale_deployment}"
  resource_group_name = azurerm_resource_group.churnkit.name
  location            = azurerm_resource_group.churnkit.location
  target_resource_id  = local.deployment_id
  tags                = local.tags

  profile {
    name = "churnkit"

    capacity {
      default = var.min_instances
      minimum = var.min_instances
      maximum = var.max_instances
    }

    rule {
      metric_trigger {
        metric_name        = "CpuUtilizationPercentage"
        metric_namespace   = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments"
        metric_resource_id = local.deployment_id
        time_grain         = "PT1M"
        statistic          = "Average"
        time_window        = "PT5M"
        time_aggregation   = "Average"
        operator           = "GreaterThan"
        threshold          = var.cpu_scale_out_percent
      }

      scale_action {
        direction = "Increase"
        type      = "ChangeCount"
        value     = "1"
        cooldown  = "PT${var.scale_out_cooldown_minutes}M"
      }
    }

    rule {
      metric_trigger {
        metric_name        = "CpuUtilizationPercentage"
        metric_namespace   = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments"
        metric_resource_id = local.deployment_id
        time_grain         = "PT1M"
        statistic          = "Average"
        time_window        = "PT10M"
        time_aggregation   = "Average"
        operator           = "LessThan"
        threshold          = var.cpu_scale_in_percent
      }

      scale_action {
        direction = "Decrease"
        type      = "ChangeCount"
        value     = "1"
        cooldown  = "PT${var.scale_in_cooldown_minutes}M"
      }
    }
  }
}
