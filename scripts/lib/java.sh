# Sourced by scripts/stack and scripts/cluster.

java_major() { "$1" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p'; }

# The JDK for both Kafka (17+) and Elasticsearch 8.19 (17–24). STACK_JAVA_HOME
# overrides; otherwise the first JDK 17–24 found.
find_java() {
  local cands=() j m
  [ -n "${STACK_JAVA_HOME:-}" ] && cands+=("$STACK_JAVA_HOME/bin/java")
  [ -n "${JAVA_HOME:-}" ] && cands+=("$JAVA_HOME/bin/java")
  command -v java >/dev/null 2>&1 && cands+=("$(readlink -f "$(command -v java)")")
  for j in /usr/lib/jvm/*/bin/java; do cands+=("$j"); done
  for j in "${cands[@]}"; do
    [ -x "$j" ] || continue
    m=$(java_major "$j")
    if [ -n "$m" ] && [ "$m" -ge 17 ] && [ "$m" -le 24 ]; then
      dirname "$(dirname "$j")"
      return 0
    fi
  done
  return 1
}
