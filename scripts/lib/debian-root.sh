# Sourced by scripts/fresh-check and scripts/check-packages: a clean Debian
# root to work in, made from a debootstrapped base (Debian's own minimal
# system, nothing of the project's) cached as a tarball in $DEBIAN_ROOT_CACHE
# (default /var/cache/logpipe), with this machine's apt sources, resolver and
# trusted CAs. Needs root.

SUITE=${SUITE:-bookworm}
DEBIAN_ROOT_CACHE=${DEBIAN_ROOT_CACHE:-/var/cache/logpipe}

# new_root DIR: unpacks a fresh root into DIR (debootstrapping the base first
# when it is not cached).
new_root() {
  local root=$1 mirror base tmp
  command -v unshare >/dev/null || { echo "debian-root: unshare (util-linux) is missing" >&2; return 1; }
  if ! command -v debootstrap >/dev/null 2>&1; then
    echo "debian-root: apt-get install debootstrap" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
  fi
  # The mirror this machine's apt uses (deb822 .sources first, then sources.list).
  mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -v security | head -n1 | awk '{print $1}')
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  [ -n "$mirror" ] || { echo "debian-root: no Debian mirror in /etc/apt/sources.list{,.d}" >&2; return 1; }
  mkdir -p "$DEBIAN_ROOT_CACHE"
  base="$DEBIAN_ROOT_CACHE/base-$SUITE.tar"
  if [ ! -f "$base" ]; then
    echo "debian-root: debootstrap $SUITE from $mirror (cached as $base)" >&2
    tmp="$DEBIAN_ROOT_CACHE/base.tmp.$$"
    rm -rf "$tmp"
    debootstrap --variant=minbase "$SUITE" "$tmp" "$mirror" >"$DEBIAN_ROOT_CACHE/debootstrap.log" 2>&1 || {
      echo "debian-root: debootstrap failed; see $DEBIAN_ROOT_CACHE/debootstrap.log" >&2
      rm -rf "$tmp"
      return 1
    }
    tar -C "$tmp" -cf "$base.part.$$" . && mv "$base.part.$$" "$base"
    rm -rf "$tmp"
  fi
  rm -rf "$root"
  mkdir -p "$root"
  tar -C "$root" -xf "$base"
  # The same apt sources as this machine, and a resolver.
  rm -f "$root/etc/apt/sources.list"
  mkdir -p "$root/etc/apt/sources.list.d"
  cp /etc/apt/sources.list.d/* "$root/etc/apt/sources.list.d/" 2>/dev/null || true
  if [ -f /etc/apt/sources.list ]; then cp /etc/apt/sources.list "$root/etc/apt/sources.list"; fi
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  # This machine's own trusted CAs (a network that inspects TLS has its CA
  # here): part of the machine, like its apt sources; the ca-certificates
  # package adds them to the root's bundle.
  if [ -d /usr/local/share/ca-certificates ]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
  fi
  mkdir -p "$root/proc" "$root/sys" "$root/dev"
}
