# The values churnkit's azureml target reads from the environment, by variable name.

output "subscription_id" {
  description = "AZURE_SUBSCRIPTION_ID."
  value       = data.azurerm_client_config.current.subscription_id
}

output "resource_group" {
  description = "AZURE_RESOURCE_GROUP."
  value       = azurerm_resource_group.churnkit.name
}

output "workspace" {
  description = "AZUREML_WORKSPACE."
  value       = azurerm_machine_learning_workspace.churnkit.name
}

output "image_uri" {
  description = "CHURNKIT_AZURE_IMAGE_URI: push the serving image (templates/serving/Dockerfile) here."
  value       = local.image_uri
}

output "acr_login_server" {
  description = "az acr login --name <this> before docker push."
  value       = azurerm_container_registry.churnkit.login_server
}

output "endpoint_name" {
  description = "churnkit deploy --endpoint."
  value       = var.endpoint_name
}

output "application_insights_connection_string" {
  description = "For dashboards over the deployments' request logs."
  value       = azurerm_application_insights.churnkit.connection_string
  sensitive   = true
}

output "churnkit_env" {
  description = "Shell lines setting every variable the azureml target reads: eval \"$(terraform output -raw churnkit_env)\"."
  value = join("\n", [for k, v in {
    AZURE_SUBSCRIPTION_ID    = data.azurerm_client_config.current.subscription_id
    AZURE_RESOURCE_GROUP     = azurerm_resource_group.churnkit.name
    AZUREML_WORKSPACE        = azurerm_machine_learning_workspace.churnkit.name
    CHURNKIT_AZURE_IMAGE_URI = local.image_uri
  } : "export ${k}=${v}"])
}
