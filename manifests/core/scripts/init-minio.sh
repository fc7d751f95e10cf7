#!/bin/sh
# Buckets, checkpoint expiry, and the scoped MinIO user of the pipelines. Idempotent: re-running it
# (kubectl -n medembed delete job minio-bucket-init; kubectl apply -k ...) converges to the same state.
#
# Environment (set by the Job): MINIO_URL, ROOT_USER/ROOT_PASSWORD (root keys, Secret medembed-minio-root),
# PIPELINES_ACCESS_KEY/PIPELINES_SECRET_KEY (pipeline keys, Secret medembed-minio), BUCKETS,
# VERSIONED_BUCKETS, CHECKPOINT_BUCKET, CHECKPOINT_EXPIRY_DAYS, POLICY_NAME, POLICY_FILE.
set -eu

sh "$(dirname "$0")/check-credentials.sh"

# Wait for MinIO (the Job may start before the server is ready).
i=0
until mc alias set root "$MINIO_URL" "$ROOT_USER" "$ROOT_PASSWORD" >/dev/null 2>&1; do
  i=$((i + 1))
  [ "$i" -lt 60 ] || { echo "MinIO at $MINIO_URL not reachable with the root keys" >&2; exit 1; }
  sleep 5
done

for bucket in $BUCKETS; do
  mc mb --ignore-existing "root/$bucket"
done

# Object history where the server supports it (single-drive MinIO may not): an accidental
# overwrite in the registry can then be rolled back.
for bucket in $VERSIONED_BUCKETS; do
  mc version enable "root/$bucket" || echo "bucket versioning unavailable on $bucket; continuing"
done

# Backstop for checkpoints a failed or abandoned run leaves behind (a successful run deletes its own):
# every object in the checkpoint bucket expires CHECKPOINT_EXPIRY_DAYS days after it was written.
# Replacing the rules (instead of adding one) keeps re-runs from piling up duplicates.
mc ilm rule rm --all --force "root/$CHECKPOINT_BUCKET" >/dev/null 2>&1 || true
mc ilm rule add --expire-days "$CHECKPOINT_EXPIRY_DAYS" "root/$CHECKPOINT_BUCKET"
mc ilm rule ls "root/$CHECKPOINT_BUCKET"

# The pipelines' user: read the data bucket, read/write the registry, checkpoint and artifact buckets,
# nothing else (no admin API, no other bucket). `policy create` and `user add` replace what exists,
# so a changed policy file or a rotated pipeline secret key is applied by re-running the Job.
mc admin policy create root "$POLICY_NAME" "$POLICY_FILE"
mc admin user add root "$PIPELINES_ACCESS_KEY" "$PIPELINES_SECRET_KEY"
if ! output=$(mc admin policy attach root "$POLICY_NAME" --user "$PIPELINES_ACCESS_KEY" 2>&1); then
  case "$output" in
    *"already in effect"* | *"no net effect"*) echo "policy $POLICY_NAME already attached" ;;
    *) echo "$output" >&2; exit 1 ;;
  esac
fi
mc admin user info root "$PIPELINES_ACCESS_KEY"

# Prove the scope with the pipeline keys themselves: the registry is listable, the admin API is not.
mc alias set pipelines "$MINIO_URL" "$PIPELINES_ACCESS_KEY" "$PIPELINES_SECRET_KEY" >/dev/null
for bucket in $BUCKETS; do
  mc ls "pipelines/$bucket" >/dev/null
done
if mc admin user list pipelines >/dev/null 2>&1; then
  echo "the pipeline user can use MinIO's admin API: its policy is too wide" >&2
  exit 1
fi
echo "buckets ready: $BUCKETS; pipeline user scoped by policy $POLICY_NAME"
