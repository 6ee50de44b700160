# shellcheck shell=bash
# Source me: `. scripts/webgpu-env.sh`. Gives this shell a software GPU for the webgpu backend.
#
# Why: the `webgpu` npm package (Dawn) bundles no GPU driver. On a machine without one, Mesa's
# software Vulkan driver (lavapipe) stands in, but Debian 12's own (Mesa 22.3) is refused by Dawn
# ("Vulkan shaderUniform*ArrayDynamicIndexing required"); Mesa 25 from bookworm-backports works.
# This script fetches it from Debian's registry only, with a private apt state (its own sources
# list, package lists and cache: the system's packages and apt state are not touched), unpacks it
# with `dpkg -x` into a cache folder, writes an ICD file naming libvulkan_lvp.so and exports
# VK_DRIVER_FILES (plus LD_LIBRARY_PATH when the system has no libvulkan.so.1: Debian's libvulkan1
# is unpacked the same way). The second time it only exports.
#
# VK_DRIVER_FILES makes the Vulkan loader see lavapipe ONLY: do not source this on a machine whose
# real GPU you want to use (scripts/gpu-check.sh does not).
#
# Cache folder: $QRLHF_LAVAPIPE_DIR, else ${XDG_CACHE_HOME:-~/.cache}/qrlhf/lavapipe.
# It prints exactly one line (on stderr) and never fails or exits the sourcing shell, even under
# `set -euo pipefail`: without a software GPU the webgpu tests skip.

_qrlhf_lvp_fetch() {
  # Runs in a subshell; prints the Mesa version on success, one reason on failure (return 1).
  local dir=$1 tmp codename mirror sources opts deb v
  command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 || { echo "no apt-get/dpkg (not Debian)"; return 1; }
  codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
  [ "$codename" = bookworm ] || { echo "expects Debian bookworm, found '${codename:-unknown}'"; return 1; }
  # The archive the system already uses (a snapshot mirror here), else Debian's own.
  mirror=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  mkdir -p "$dir" 2>/dev/null || { echo "cannot create $dir"; return 1; }
  tmp=$(mktemp -d "$dir/.fetch.XXXXXX") || { echo "cannot write to $dir"; return 1; }
  chmod 755 "$tmp"   # apt's _apt user downloads into the current folder when it can
  mkdir -p "$tmp/lists/partial" "$tmp/archives/partial" "$tmp/parts" "$tmp/prefs" "$tmp/root" "$tmp/loader"
  sources="$tmp/sources.list"
  {
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm-backports main"
  } >"$sources"
  opts=(-q -o "Dir::Etc::SourceList=$sources" -o "Dir::Etc::SourceParts=$tmp/parts"
    -o "Dir::Etc::Preferences=$tmp/prefs/none" -o "Dir::Etc::PreferencesParts=$tmp/prefs"
    -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "Dir::Cache::archives=$tmp/archives"
    -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update >"$tmp/apt.log" 2>&1 || { echo "apt-get update failed ($(tail -n1 "$tmp/apt.log"))"; rm -rf "$tmp"; return 1; }
  (cd "$tmp" && apt-get "${opts[@]}" download mesa-vulkan-drivers/bookworm-backports libvulkan1) >>"$tmp/apt.log" 2>&1 ||
    { echo "apt-get download failed ($(grep -m1 -E '^(E|W):' "$tmp/apt.log"))"; rm -rf "$tmp"; return 1; }
  for deb in "$tmp"/mesa-vulkan-drivers_*.deb; do dpkg -x "$deb" "$tmp/root" || { echo "dpkg -x $deb failed"; rm -rf "$tmp"; return 1; }; done
  for deb in "$tmp"/libvulkan1_*.deb; do dpkg -x "$deb" "$tmp/loader" || { echo "dpkg -x $deb failed"; rm -rf "$tmp"; return 1; }; done
  v=$(dpkg-deb -f "$tmp"/mesa-vulkan-drivers_*.deb Version 2>/dev/null)
  rm -rf "$tmp/lists" "$tmp/archives" "$tmp/cache" "$tmp/parts" "$tmp/prefs" "$tmp"/*.deb "$sources"
  echo "$v" >"$tmp/VERSION"
  rm -rf "$dir/current" && mv "$tmp" "$dir/current" || { echo "cannot move the unpacked files into $dir"; return 1; }
  echo "$v"
}

_qrlhf_webgpu_env() {
  local dir lvp out fetched='' v icd loaderdir
  dir=${QRLHF_LAVAPIPE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/qrlhf/lavapipe}
  lvp=$(find "$dir/current/root" -name libvulkan_lvp.so 2>/dev/null | head -n1)
  if [ -z "$lvp" ]; then
    if command -v flock >/dev/null 2>&1 && mkdir -p "$dir" 2>/dev/null; then
      # Two shells sourcing at once: the second waits for the first's unpacking.
      out=$( (flock 9; lvp=$(find "$dir/current/root" -name libvulkan_lvp.so 2>/dev/null | head -n1)
        if [ -n "$lvp" ]; then cat "$dir/current/VERSION"; else _qrlhf_lvp_fetch "$dir"; fi) 9>"$dir/.lock")
    else
      out=$(_qrlhf_lvp_fetch "$dir")
    fi || { echo "webgpu-env: no software GPU: $out; the webgpu backend and its tests will be unavailable" >&2; return 0; }
    fetched=1
    lvp=$(find "$dir/current/root" -name libvulkan_lvp.so 2>/dev/null | head -n1)
    [ -n "$lvp" ] || { echo "webgpu-env: no software GPU: libvulkan_lvp.so missing after unpacking into $dir" >&2; return 0; }
  fi
  v=$(cat "$dir/current/VERSION" 2>/dev/null)
  icd="$dir/current/lvp_icd.json"
  if [ ! -s "$icd" ]; then
    printf '{"file_format_version":"1.0.0","ICD":{"library_path":"%s","api_version":"1.3.0"}}\n' "$lvp" >"$icd" ||
      { echo "webgpu-env: cannot write $icd" >&2; return 0; }
  fi
  export VK_DRIVER_FILES="$icd"
  local extra=''
  if ! { /sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null; } | grep -q 'libvulkan\.so\.1 '; then
    loaderdir=$(dirname "$(find "$dir/current/loader" -name 'libvulkan.so.1' 2>/dev/null | head -n1)")
    case ":${LD_LIBRARY_PATH:-}:" in *":$loaderdir:"*) ;; *) export LD_LIBRARY_PATH="$loaderdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;; esac
    extra=" and LD_LIBRARY_PATH (Debian's libvulkan1 from the cache)"
  fi
  if [ -n "$fetched" ]; then
    echo "webgpu-env: unpacked lavapipe (mesa-vulkan-drivers ${v:-?} from bookworm-backports) into $dir; exported VK_DRIVER_FILES$extra" >&2
  else
    echo "webgpu-env: lavapipe (mesa-vulkan-drivers ${v:-?}) from $dir; exported VK_DRIVER_FILES$extra" >&2
  fi
  return 0
}

_qrlhf_webgpu_env || true
unset -f _qrlhf_webgpu_env _qrlhf_lvp_fetch
