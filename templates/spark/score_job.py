"""spark-submit entry point for batch scoring: ``churnkit score --engine spark`` with the arguments given.

    spark-submit --master yarn --deploy-mode cluster templates/spark/score_job.py \
        --model models:/churn@champion --input s3a://bucket/customers/2026-12/ --output s3a://bucket/scores/

The session is the one spark-submit configured (master, executors, the cluster's storage credentials);
churnkit ships its own code and the model folder to the executors (``addPyFile``, ``addArchive``). The
MLflow tracking server is read from ``MLFLOW_TRACKING_URI`` on the driver. See docs/batch-scoring.md.
"""

import sys

from churnkit.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(["score", *args] if "--engine" in args else ["score", "--engine", "spark", *args]))
