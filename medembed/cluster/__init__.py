"""Operating the product on a Kubeflow cluster: preflight checks (`preflight`) and the KFP run life cycle
(`runs`), with their command-line front ends in `commands`.

The names below are where manifests/ and the code meet; tests/test_manifests.py fails when they drift.
Nothing here imports kfp or kubernetes at module level: pipeline tasks import `medembed` too.
"""

# Kubeflow profile namespace the manifests target (pipeline pods run there; Secret + kfp-launcher live there).
PROFILE_NAMESPACE = "kubeflow-user-example-com"
# Namespace of this product's MinIO (manifests/core).
MINIO_NAMESPACE = "medembed"
# kfp-launcher's defaultPipelineRoot: run artifacts in this product's MinIO (bucket made by the init Job).
PIPELINE_ROOT = "s3://medembed-artifacts/pipelines"
# MinIO's root keys: only in MINIO_NAMESPACE. The pipelines' scoped keys are ClusterConfig.minio_secret.
ROOT_SECRET = "medembed-minio-root"
# MinIO policy of the pipelines' user (manifests/core/scripts/pipelines-policy.json).
PIPELINES_POLICY = "medembed-pipelines"
# Example credentials start with this (manifests/base/*.env.example); deploy and preflight refuse them.
EXAMPLE_CREDENTIAL_PREFIX = "CHANGE-ME"
