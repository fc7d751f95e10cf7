#!/bin/sh
# Refuses example, default and weak MinIO credentials, before MinIO starts (init container of the
# Deployment) and before the bucket Job creates the pipeline user. A refusal keeps the MinIO pod in
# Init:CrashLoopBackOff and the Job failing, with the reason in their logs: nothing serves with keys
# that are published in this repository or in MinIO's documentation.
#
# Reads whichever of these are set: ROOT_USER ROOT_PASSWORD PIPELINES_ACCESS_KEY PIPELINES_SECRET_KEY.
# POSIX sh (the MinIO and mc images ship bash as /bin/sh; tests run it with the system sh).
set -u

MIN_SECRET_CHARS=16
failures=0

refuse() {
  echo "refusing to start: $1" >&2
  failures=$((failures + 1))
}

check_value() {
  # $1: name shown in messages, $2: value, $3: "secret" or "user"
  name=$1 value=$2 kind=$3
  if [ -z "$value" ]; then
    refuse "$name is empty"
    return
  fi
  case "$value" in
    CHANGE-ME*)
      refuse "$name is still the example value from manifests/base/*.env.example"
      return
      ;;
  esac
  # MinIO's and Kubeflow's well-known defaults.
  case "$value" in
    minioadmin | minio | minio123 | admin | password | changeme | secret | secretkey | accesskey)
      refuse "$name is a well-known default credential ($value)"
      return
      ;;
  esac
  if [ "$kind" = secret ] && [ "${#value}" -lt "$MIN_SECRET_CHARS" ]; then
    refuse "$name has ${#value} characters, fewer than $MIN_SECRET_CHARS"
  fi
}

[ -n "${ROOT_USER+set}" ] && check_value "the root user (medembed-minio-root: accesskey)" "$ROOT_USER" user
[ -n "${ROOT_PASSWORD+set}" ] && check_value "the root password (medembed-minio-root: secretkey)" "$ROOT_PASSWORD" secret
[ -n "${PIPELINES_ACCESS_KEY+set}" ] && check_value "the pipeline access key (medembed-minio: accesskey)" "$PIPELINES_ACCESS_KEY" user
[ -n "${PIPELINES_SECRET_KEY+set}" ] && check_value "the pipeline secret key (medembed-minio: secretkey)" "$PIPELINES_SECRET_KEY" secret

if [ -n "${ROOT_USER:-}" ] && [ "${ROOT_USER:-}" = "${PIPELINES_ACCESS_KEY:-}" ]; then
  refuse "the pipeline access key equals the root user: the pipelines must get their own, scoped MinIO user"
fi
if [ -n "${ROOT_PASSWORD:-}" ] && [ "${ROOT_PASSWORD:-}" = "${PIPELINES_SECRET_KEY:-}" ]; then
  refuse "the pipeline secret key equals the root password: generate a separate one"
fi

if [ "$failures" -gt 0 ]; then
  echo "fix: put real values in manifests/base/minio.env and manifests/base/minio-pipelines.env" \
    "(e.g. secretkey=\$(openssl rand -hex 24)), then kubectl apply -k manifests/overlays/<overlay>" >&2
  exit 1
fi
echo "credentials: not an example, not a default, secrets of at least $MIN_SECRET_CHARS characters"
