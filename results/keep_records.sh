# Sourced by the results' commands.sh scripts (run from the repository root).
# keep_records OUT RECORDS DATA: copy each finished run's record under OUT (config.yaml, log.jsonl,
# summary.json and its sweep's sweep.json; no checkpoint) into RECORDS, the same paths below it,
# with DATA's absolute path written as DATA was given, so the records name no machine's paths.
# A new machine copies RECORDS back into OUT first: the sweep then skips the finished runs.
keep_records() {
  local out=$1 records=$2 data=$3 summary dir f
  for summary in $(cd "$out" && find . -name summary.json | sort); do
    dir=$(dirname "$summary")
    mkdir -p "$records/$dir"
    for f in "$dir"/config.yaml "$dir"/log.jsonl "$dir"/summary.json "$(dirname "$dir")"/sweep.json; do
      sed "s|$(realpath "$data")|$data|g" "$out/$f" > "$records/$f"
    done
  done
}
