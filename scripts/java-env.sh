#!/usr/bin/env bash
# Makes sure Java 17+ and Debian's PostgreSQL JDBC driver are installed (apt, by package name)
# and prints the driver jar's path.
set -euo pipefail
JAR=/usr/share/java/postgresql.jar
if ! command -v java >/dev/null || [ ! -f "$JAR" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    openjdk-17-jre-headless libpostgresql-jdbc-java) >&2
fi
echo "$JAR"
