# Batch scoring on Vertex AI batch prediction (churnkit score --target vertex). The kit stages each job's
# input under churnkit/batch/<job>/input/ of the bucket and the job writes prediction-*/ folders under
# churnkit/batch/<job>/output/. Jobs run as the serving account, which already reads the bucket
# (serve_reads_models); it may create objects under churnkit/batch/ only. The deployer already has what
# the kit needs: aiplatform.user creates, reads and cancels batch prediction jobs, the bucket roles stage the
# input and read the output, serviceAccountUser lets the jobs run as the serving account.

resource "google_storage_bucket_iam_member" "serve_writes_batch_output" {
  bucket = google_storage_bucket.churnkit.name
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:${google_service_account.serve.email}"

  condition {
    title       = "churnkit-batch-output"
    description = "batch prediction output under churnkit/batch/ only"
    expression  = "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.churnkit.name}/objects/churnkit/batch/\")"
  }
}

output "batch_prefix" {
  description = "Where churnkit score --target vertex stages each job's input and Vertex writes its output (<prefix><job>/input/, <prefix><job>/output/)."
  value       = "gs://${google_storage_bucket.churnkit.name}/churnkit/batch/"
}
