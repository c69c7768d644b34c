# Shell helpers for the training scripts (sourced, not run).
# have_adapter STORE NAME: the store's manifest lists a trained adapter NAME. A JSON lookup, not a
# grep: the manifest's routing evidence names languages too.
have_adapter() {
  python -c 'import json,sys; sys.exit(sys.argv[2] not in json.load(open(sys.argv[1]))["adapters"])' \
    "$1/manifest.json" "$2" 2>/dev/null
}
# language_adapters STORE: the names of the store's language adapters, variants ('sw-noinv', 'sw-v2') left out.
language_adapters() {
  python -c 'import json,sys; m=json.load(open(sys.argv[1]))["adapters"]
print(" ".join(k for k, v in m.items() if v["kind"] == "language" and "-" not in k))' "$1/manifest.json"
}
