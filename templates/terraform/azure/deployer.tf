# The identity that deploys, rolls out and watches the endpoint: a user-assigned managed identity that CI
# jobs sign in as through workload identity federation (GitHub Actions, GitLab CI, Azure DevOps; no secret),
# with the roles churnkit needs and no more:
#   AzureML Data Scientist   on the workspace: models, environments, online endpoints and deployments
#   Monitoring Reader        on the workspace: the endpoint's metrics for the rollout checks and latency
#   Storage Blob Data Reader on the workspace's blob container: data capture of the deployments
#   AcrPush                  on the registry: churnkit image build --push --target azureml
#
#   terraform output deployer_client_id    # AZURE_CLIENT_ID of the CI templates

resource "azurerm_user_assigned_identity" "deployer" {
  name                = "id-${var.name}-deployer"
  resource_group_name = azurerm_resource_group.churnkit.name
  location            = azurerm_resource_group.churnkit.location
  tags                = local.tags
}

locals {
  federated = merge(
    var.github_repository != "" ? {
      github = { issuer = "https://token.actions.githubusercontent.com", subject = "repo:${var.github_repository}:${var.github_subject}" }
    } : {},
    var.gitlab_project != "" ? {
      gitlab = { issuer = var.gitlab_url, subject = "project_path:${var.gitlab_project}:ref_type:branch:ref:${var.gitlab_branch}" }
    } : {},
    var.azure_devops_organization_id != "" ? {
      azure-devops = {
        issuer  = "https://vstoken.dev.azure.com/${var.azure_devops_organization_id}"
        subject = "sc://${var.azure_devops_organization}/${var.azure_devops_project}/${var.azure_devops_service_connection}"
      }
    } : {},
  )
  # the workspace's default blob container (workspaceblobstore), where deployments' data capture lands
  capture_container = "${azurerm_storage_account.churnkit.id}/blobServices/default/containers/azureml-blobstore-${azurerm_machine_learning_workspace.churnkit.workspace_id}"
  deployer_roles = {
    workspace_data_scientist = { scope = azurerm_machine_learning_workspace.churnkit.id, role = "AzureML Data Scientist" }
    workspace_metrics        = { scope = azurerm_machine_learning_workspace.churnkit.id, role = "Monitoring Reader" }
    capture_reader           = { scope = local.capture_container, role = "Storage Blob Data Reader" }
    image_push               = { scope = azurerm_container_registry.churnkit.id, role = "AcrPush" }
  }
}

resource "azurerm_federated_identity_credential" "ci" {
  for_each  = local.federated
  name      = "${var.name}-${each.key}"
  parent_id = azurerm_user_assigned_identity.deployer.id # names the resource group too (resource_group_name is deprecated)
  audience  = ["api://AzureADTokenExchange"]
  issuer    = each.value.issuer
  subject   = each.value.subject
}

resource "azurerm_role_assignment" "deployer" {
  for_each             = local.deployer_roles
  scope                = each.value.scope
  role_definition_name = each.value.role
  principal_id         = azurerm_user_assigned_identity.deployer.principal_id
  principal_type       = "ServicePrincipal"
}
