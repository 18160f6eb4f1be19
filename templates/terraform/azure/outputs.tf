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
  description = "CHURNKIT_AZURE_IMAGE_URI: churnkit image build --push --target azureml pushes the serving image here."
  value       = local.image_uri
}

output "acr_login_server" {
  description = "az acr login --name <this> before docker push."
  value       = azurerm_container_registry.churnkit.login_server
}

output "endpoint_name" {
  description = "CHURNKIT_ENDPOINT (or --endpoint of churnkit deploy, rollout, rollback, endpoint and monitor --latency)."
  value       = local.endpoint_name
}

output "application_insights_connection_string" {
  description = "For dashboards over the deployments' request logs."
  value       = azurerm_application_insights.churnkit.connection_string
  sensitive   = true
}

output "deployer_client_id" {
  description = "AZURE_CLIENT_ID of the CI templates: the managed identity that deploys, rolls out and monitors."
  value       = azurerm_user_assigned_identity.deployer.client_id
}

output "deployer_principal_id" {
  description = "Object id of the deployer identity (role assignments name it)."
  value       = azurerm_user_assigned_identity.deployer.principal_id
}

output "deployer_roles" {
  description = "The deployer's roles and their scopes: cite them when a call is denied."
  value       = { for k, v in local.deployer_roles : v.role => v.scope }
}

output "tenant_id" {
  description = "AZURE_TENANT_ID."
  value       = data.azurerm_client_config.current.tenant_id
}

output "autoscale_setting_id" {
  description = "The Azure Monitor autoscale setting of autoscale_deployment (empty without one)."
  value       = try(azurerm_monitor_autoscale_setting.deployment[0].id, "")
}

output "churnkit_env" {
  description = "Shell lines setting every variable the azureml target reads: eval \"$(terraform output -raw churnkit_env)\"."
  value = join("\n", [for k, v in {
    AZURE_SUBSCRIPTION_ID        = data.azurerm_client_config.current.subscription_id
    AZURE_RESOURCE_GROUP         = azurerm_resource_group.churnkit.name
    AZUREML_WORKSPACE            = azurerm_machine_learning_workspace.churnkit.name
    CHURNKIT_AZURE_IMAGE_URI     = local.image_uri
    CHURNKIT_ENDPOINT            = local.endpoint_name
    CHURNKIT_AZURE_BATCH_COMPUTE = azurerm_machine_learning_compute_cluster.batch.name
  } : "export ${k}=${v}"])
}
