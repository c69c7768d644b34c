# Shell helpers for the training scripts (sourced, not run).
# have_adapter STORE NAME: the store's manifest lists a trained adapter NAME. A JSON lookup, not a
# grep: the manifest's routing evidence names languages too.
have_adapter() {
  python -c 'import json,sys; sys.exit(sys.argv[2] not in json.load(open(sys.argv[1]))["adapters"])' \
    "$1/manifest.json" "$2" 2>/dev/null
}
