// optc-run: runs an optc-compiled model (model.so, a TVM Relax VM executable) without Python.
//
// It links only the TVM runtime (libtvm_runtime.so, libtvm_ffi.so, shipped beside it; rpath
// $ORIGIN) and uses only the tvm-ffi C++ API: Module::LoadFromFile -> vm_load_executable ->
// vm_initialization(kDLCPU, 0, pooled) -> "main", the sequence of python/tvm/runtime/vm.py.
// The signature (inputs, outputs, symbolic dims, assumptions, target) is read from the
// library's own `optc_signature` function (codegen/signature.py), and inputs are checked the
// way optc's Python runtime checks them (ir/signature.py), with the same wording.
//
// Exit status: 0 success; 1 the model failed while running (its run-time checks refused an input,
// or TVM raised); 2 bad usage, a bad file, or inputs that do not fit the signature. Every error
// is one line on stderr: `optc-run: error: <message>`.
//
// `optc-run --rpc-server` serves TVM's RPC protocol instead (see the section "RPC server"): the
// handshake and tracker registration of python/tvm/rpc/server.py, then the runtime's own
// "rpc.ServerLoop", so `optc bench --remote` can time a model on a board without Python there.
//
// Built by optc (optc/native/toolchain.py): g++ -std=c++17 -O2 -s, tvm-ffi headers only.

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

#ifndef OPTC_TVM_VERSION  // set by optc/native/toolchain.py: the TVM versions this runner was built against
#define OPTC_TVM_VERSION "unknown"
#endif
#ifndef OPTC_TVM_FFI_VERSION
#define OPTC_TVM_FFI_VERSION "unknown"
#endif

namespace {

const char* kUsage = R"(usage: optc-run [options] [INPUTS.npz | NAME=FILE.npy ...]

Runs an optc-compiled model (model.so) on inputs from an .npz file (numpy.savez: one array per
input name) or from one .npy file per input, and writes the outputs as an .npz file.

options:
  --model PATH     the compiled library, or an artifact folder holding model.so
                   (default: model.so beside this program)
  -o, --output F   write the outputs to F (.npz, written atomically); without it the outputs'
                   shapes are printed
  --repeat N       run N times (after the warm-up runs) and print median/min/p90 milliseconds
  --warmup K       untimed runs before the timed ones (default 1 with --repeat, else 0)
  --threads N      worker threads of the TVM runtime (default: TVM_NUM_THREADS, else all CPUs)
  --json           with --repeat, print the timings as one JSON object (every run's ms in
                   "runs_ms") instead of the summary line and the outputs' shapes
  --signature      print the model's embedded signature (JSON) and exit
  --rpc-server     serve TVM's RPC protocol instead (optc-run --rpc-server --help)
  -h, --help       show this help

Element types numpy lacks are given and written in the form the module holds them: bf16 as
uint16 bit patterns; fp8/f8e8m0/f4e2m1 as uint8 bit patterns; i4/i2 as int8 and u4/u2 as uint8
values. Arrays numpy.save wrote from ml_dtypes arrays (raw void elements) are accepted too.
Exit status: 0 ok, 1 the model failed while running, 2 bad usage, files or inputs.
)";

// -- errors --------------------------------------------------------------------------------------
struct Fail : std::runtime_error {
  int status;
  Fail(int s, const std::string& m) : std::runtime_error(m), status(s) {}
};
[[noreturn]] void Bad(const std::string& m) { throw Fail(2, m); }

std::string OneLine(std::string s) {
  for (char& c : s) if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  size_t b = s.find_first_not_of(' '), e = s.find_last_not_of(' ');
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}
// `s` safe for a terminal: valid UTF-8 is kept, control bytes and invalid sequences become \xNN.
std::string Printable(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    bool ok = n > 0 && i + n <= s.size() && (n > 1 || (c >= 0x20 && c != 0x7f));
    for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(s[i + k]) >> 6) == 2;
    if (ok) { out.append(s, i, n); i += n; continue; }
    char buf[8];
    std::snprintf(buf, sizeof(buf), "\\x%02x", c);
    out += buf;
    ++i;
  }
  return out;
}
std::string Q(const std::string& s) { return "'" + s + "'"; }
std::string Shape(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// -- element types -------------------------------------------------------------------------------
// kind/size: the numpy element type of the array a caller gives (the module's storage type for
// the types numpy lacks, codegen/storage.py); bits/sign: sub-byte integers' value range.
struct ElemType {
  const char* optc; const char* tvm; char kind; int size; int bits; bool sign; bool stored;
};
const ElemType kTypes[] = {
    {"f32", "float32", 'f', 4, 0, false, false},  {"f16", "float16", 'f', 2, 0, false, false},
    {"f64", "float64", 'f', 8, 0, false, false},  {"bf16", "bfloat16", 'u', 2, 0, false, true},
    {"i8", "int8", 'i', 1, 0, false, false},      {"i16", "int16", 'i', 2, 0, false, false},
    {"i32", "int32", 'i', 4, 0, false, false},    {"i64", "int64", 'i', 8, 0, false, false},
    {"u8", "uint8", 'u', 1, 0, false, false},     {"u16", "uint16", 'u', 2, 0, false, false},
    {"u32", "uint32", 'u', 4, 0, false, false},   {"u64", "uint64", 'u', 8, 0, false, false},
    {"bool", "bool", 'b', 1, 0, false, false},
    {"f8e4m3fn", "uint8", 'u', 1, 8, false, true}, {"f8e4m3fnuz", "uint8", 'u', 1, 8, false, true},
    {"f8e5m2", "uint8", 'u', 1, 8, false, true},   {"f8e5m2fnuz", "uint8", 'u', 1, 8, false, true},
    {"f8e8m0", "uint8", 'u', 1, 8, false, true},   {"f4e2m1", "uint8", 'u', 1, 4, false, true},
    {"i4", "int8", 'i', 1, 4, true, true},         {"u4", "uint8", 'u', 1, 4, false, true},
    {"i2", "int8", 'i', 1, 2, true, true},         {"u2", "uint8", 'u', 1, 2, false, true},
};
const ElemType& TypeOf(const std::string& optc) {
  for (const ElemType& t : kTypes) if (optc == t.optc) return t;
  Bad("the model uses element type " + optc + ", which this optc-run does not know: rebuild the runner");
}
std::string NumpyName(char kind, int size) {  // optc's spelling of a numpy element type
  if (kind == 'b' && size == 1) return "bool";
  if (kind == 'V') return "raw " + std::to_string(size) + "-byte elements";
  return std::string(1, kind == 'f' ? 'f' : kind) + std::to_string(size * 8);
}
std::string StorageHint(const ElemType& t) {
  if (!t.stored) return "";
  if (t.bits == 0) return " (give its bit patterns as uint16)";
  if (t.optc[0] == 'f') return " (give its bit patterns as uint8)";
  return std::string(" (give its values as ") + (t.sign ? "int8)" : "uint8)");
}

// -- arrays, .npy ----------------------------------------------------------------------------------
struct Array {
  char kind = 0;  // numpy kind: f i u b V
  int size = 0;   // bytes per element
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // C order, native byte order
  int64_t Count() const { int64_t n = 1; for (int64_t d : shape) n *= d; return n; }
};

bool LittleEndianHost() { uint16_t x = 1; uint8_t b; std::memcpy(&b, &x, 1); return b == 1; }

// Parses the .npy bytes `p[0..n)`; `where` names the array in messages.
Array ParseNpy(const uint8_t* p, size_t n, const std::string& where) {
  if (n < 10 || std::memcmp(p, "\x93NUMPY", 6) != 0) Bad(where + ": not a .npy array");
  int major = p[6];
  size_t hlen, off;
  if (major == 1) { hlen = p[8] | (p[9] << 8); off = 10; }
  else if (major == 2 || major == 3) {
    if (n < 12) Bad(where + ": truncated .npy header");
    hlen = p[8] | (p[9] << 8) | (size_t(p[10]) << 16) | (size_t(p[11]) << 24); off = 12;
  } else Bad(where + ": unsupported .npy format version " + std::to_string(major));
  if (hlen > (1u << 16) || off + hlen > n) Bad(where + ": truncated .npy header");
  std::string h(reinterpret_cast<const char*>(p + off), hlen);
  auto value_of = [&](const char* key) -> std::string {
    size_t k = h.find(std::string("'") + key + "'");
    if (k == std::string::npos) Bad(where + ": .npy header lacks '" + key + "'");
    size_t c = h.find(':', k);
    if (c == std::string::npos) Bad(where + ": malformed .npy header");
    size_t b = h.find_first_not_of(' ', c + 1);
    return b == std::string::npos ? "" : h.substr(b);
  };
  std::string d = value_of("descr");
  if (d.empty() || (d[0] != '\'' && d[0] != '"')) Bad(where + ": element type is not a number type (a structured array)");
  d = d.substr(1, d.find(d[0], 1) - 1);
  char order = '|';
  if (!d.empty() && std::strchr("<>|=", d[0])) { order = d[0]; d = d.substr(1); }
  Array a;
  a.kind = d.empty() ? 0 : d[0];
  a.size = d.size() > 1 ? std::atoi(d.c_str() + 1) : 0;
  if (!std::strchr("fiubV", a.kind) || a.kind == 0 || a.size <= 0 || a.size > 16 ||
      d.find_first_not_of("0123456789", 1) != std::string::npos)
    Bad(where + ": element type " + Q(d) + " is not a number type");
  bool fortran = value_of("fortran_order").rfind("True", 0) == 0;
  std::string s = value_of("shape");
  if (s.empty() || s[0] != '(') Bad(where + ": malformed .npy shape");
  s = s.substr(1, s.find(')') - 1);
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    item = OneLine(item);
    if (item.empty()) continue;
    if (item.find_first_not_of("0123456789") != std::string::npos || item.size() > 18)
      Bad(where + ": malformed .npy shape (" + item + ")");
    a.shape.push_back(std::stoll(item));
  }
  size_t count = 1;
  for (int64_t dim : a.shape) {
    if (dim != 0 && count > (size_t(1) << 48) / size_t(dim)) Bad(where + ": its header claims too many elements");
    count *= size_t(dim);
  }
  size_t need = count * size_t(a.size), have = n - off - hlen;
  if (need > have)
    Bad(where + ": its header claims " + std::to_string(count) + " elements (" + std::to_string(need) +
        " bytes) but the file holds " + std::to_string(have) + " bytes (truncated or corrupt)");
  const uint8_t* src = p + off + hlen;
  a.data.resize(need);
  if (fortran && a.shape.size() > 1) {  // reorder to C order, element by element
    size_t nd = a.shape.size();
    std::vector<int64_t> idx(nd, 0), fstride(nd, 1);
    for (size_t i = 1; i < nd; ++i) fstride[i] = fstride[i - 1] * a.shape[i - 1];
    for (size_t c = 0; c < count; ++c) {
      size_t f = 0;
      for (size_t i = 0; i < nd; ++i) f += size_t(idx[i] * fstride[i]);
      std::memcpy(&a.data[c * a.size], src + f * a.size, a.size);
      for (size_t i = nd; i-- > 0;) { if (++idx[i] < a.shape[i]) break; idx[i] = 0; }
    }
  } else if (need) {
    std::memcpy(a.data.data(), src, need);
  }
  bool swap = a.size > 1 && a.kind != 'V' && ((order == '>') == LittleEndianHost()) && order != '|' && order != '=';
  if (swap)
    for (size_t i = 0; i < need; i += a.size) std::reverse(&a.data[i], &a.data[i] + a.size);
  return a;
}

std::vector<uint8_t> NpyBytes(const Array& a, const ElemType& t) {
  std::string descr = std::string(a.size == 1 ? "|" : (LittleEndianHost() ? "<" : ">")) +
                      (t.kind == 'b' ? "b" : std::string(1, t.kind)) + std::to_string(a.size);
  std::string shape = "(";
  for (int64_t d : a.shape) shape += std::to_string(d) + ",";
  if (a.shape.size() > 1) shape.pop_back();
  shape += ")";
  std::string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  size_t total = 10 + h.size() + 1;
  h += std::string((64 - total % 64) % 64, ' ') + "\n";
  std::vector<uint8_t> out = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, uint8_t(h.size() & 0xff), uint8_t(h.size() >> 8)};
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), a.data.begin(), a.data.end());
  return out;
}

// -- zip (.npz): stored members only ---------------------------------------------------------------
uint32_t Crc32(const uint8_t* p, size_t n, uint32_t crc = 0) {
  static uint32_t table[256];
  static bool init = false;
  if (!init) {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    init = true;
  }
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}
uint64_t Le(const uint8_t* p, int n) { uint64_t v = 0; for (int i = n; i-- > 0;) v = (v << 8) | p[i]; return v; }

std::vector<uint8_t> ReadFile(const std::string& path, const std::string& flag) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) Bad(flag + path + ": no such file");
  if (S_ISDIR(st.st_mode)) Bad(flag + path + ": is a folder, expected a file");
  std::ifstream f(path, std::ios::binary);
  if (!f) Bad(flag + path + ": cannot be read (" + std::strerror(errno) + ")");
  std::vector<uint8_t> buf(static_cast<size_t>(st.st_size));
  if (!buf.empty() && !f.read(reinterpret_cast<char*>(buf.data()), buf.size()))
    Bad(flag + path + ": cannot be read");
  return buf;
}

std::map<std::string, Array> ReadNpz(const std::string& path) {
  const std::string where = path;
  std::vector<uint8_t> z = ReadFile(path, "");
  auto bad = [&](const std::string& why) { Bad(where + ": not a readable .npz file (" + why + ")"); };
  if (z.size() >= 6 && std::memcmp(z.data(), "\x93NUMPY", 6) == 0)
    Bad(where + ": not an .npz file (a .npy file: give it as NAME=" + path + ", or save named inputs with numpy.savez)");
  if (z.size() < 22) Bad(where + ": not an .npz file");
  size_t eocd = std::string::npos;  // end of central directory record, searched from the end
  for (size_t i = z.size() - 22 + 1; i-- > 0 && z.size() - i <= 22 + 65535;)
    if (Le(&z[i], 4) == 0x06054b50) { eocd = i; break; }
  if (eocd == std::string::npos) Bad(where + ": not an .npz file");
  uint64_t entries = Le(&z[eocd + 10], 2), cd = Le(&z[eocd + 16], 4);
  if ((entries == 0xffff || cd == 0xffffffffu) && eocd >= 20 && Le(&z[eocd - 20], 4) == 0x07064b50) {
    uint64_t z64 = Le(&z[eocd - 12], 8);  // zip64 end of central directory record
    if (z64 > z.size() || z64 + 56 > z.size() || Le(&z[z64], 4) != 0x06064b50) bad("bad zip64 record");
    entries = Le(&z[z64 + 32], 8);
    cd = Le(&z[z64 + 48], 8);
  }
  std::map<std::string, Array> out;
  size_t p = cd;
  for (uint64_t e = 0; e < entries; ++e) {
    if (p > z.size() || p + 46 > z.size() || Le(&z[p], 4) != 0x02014b50) bad("bad central directory");
    uint32_t flags = Le(&z[p + 8], 2), method = Le(&z[p + 10], 2), crc = Le(&z[p + 16], 4);
    uint64_t csize = Le(&z[p + 20], 4), usize = Le(&z[p + 24], 4), lho = Le(&z[p + 42], 4);
    size_t nlen = Le(&z[p + 28], 2), elen = Le(&z[p + 30], 2), clen = Le(&z[p + 32], 2);
    if (p + 46 + nlen + elen + clen > z.size()) bad("bad central directory");
    std::string name(reinterpret_cast<const char*>(&z[p + 46]), nlen);
    for (size_t x = p + 46 + nlen; x + 4 <= p + 46 + nlen + elen;) {  // zip64 sizes and offset
      size_t id = Le(&z[x], 2), len = Le(&z[x + 2], 2), q = x + 4;
      if (id == 1) {
        if (usize == 0xffffffffu && q + 8 <= x + 4 + len) { usize = Le(&z[q], 8); q += 8; }
        if (csize == 0xffffffffu && q + 8 <= x + 4 + len) { csize = Le(&z[q], 8); q += 8; }
        if (lho == 0xffffffffu && q + 8 <= x + 4 + len) { lho = Le(&z[q], 8); }
      }
      x += 4 + len;
    }
    p += 46 + nlen + elen + clen;
    if (!name.empty() && name.back() == '/') continue;
    std::string key = name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0 ? name.substr(0, name.size() - 4) : name;
    std::string what = where + ": array " + Q(key);
    if (flags & 1) Bad(what + " is encrypted");
    if (method == 8)
      Bad(what + " is compressed (numpy.savez_compressed); optc-run reads uncompressed .npz files: save them with numpy.savez");
    if (method != 0) Bad(what + " uses zip compression method " + std::to_string(method) + "; save it with numpy.savez");
    if (lho > z.size() || lho + 30 > z.size() || Le(&z[lho], 4) != 0x04034b50) bad("bad local header of " + Q(key));
    uint64_t data = lho + 30 + Le(&z[lho + 26], 2) + Le(&z[lho + 28], 2);
    if (csize != usize || usize > z.size() || data + usize > z.size()) Bad(what + ": truncated");
    if (Crc32(&z[data], usize) != crc) Bad(what + ": CRC mismatch (corrupt file)");
    if (out.count(key)) Bad(where + ": holds array " + Q(key) + " twice");
    out[key] = ParseNpy(&z[data], usize, what);
  }
  if (out.empty()) Bad(where + ": holds no arrays");
  return out;
}

void WriteAll(int fd, const void* p, size_t n, const std::string& path) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) Bad(path + ": cannot be written (" + std::strerror(errno) + ")");
    c += w; n -= size_t(w);
  }
}

// Writes `members` (name -> .npy bytes) as a stored zip, atomically: a temp file beside `path`,
// fsynced, renamed onto it, then the folder fsynced.
void WriteNpz(const std::string& path, const std::vector<std::pair<std::string, std::vector<uint8_t>>>& members) {
  size_t slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  std::string prefix = "." + base + ".optc-run-", head = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  if (DIR* d = ::opendir(dir.c_str())) {  // temps of killed runs for this destination (dead pids only)
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n.size() <= prefix.size() + 4 || n.compare(0, prefix.size(), prefix) != 0 || n.compare(n.size() - 4, 4, ".tmp") != 0) continue;
      std::string pid = n.substr(prefix.size(), n.size() - prefix.size() - 4);
      if (pid.empty() || pid.size() > 9 || pid.find_first_not_of("0123456789") != std::string::npos) continue;
      if (::kill(std::stoi(pid), 0) != 0 && errno == ESRCH) ::unlink((head + n).c_str());
    }
    ::closedir(d);
  }
  std::string tmp = head + prefix + std::to_string(getpid()) + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) Bad(path + ": cannot be written (" + std::strerror(errno) + ")");
  try {
    std::vector<uint8_t> cd;
    uint64_t off = 0;
    auto put = [](std::vector<uint8_t>& v, uint64_t x, int n) { for (int i = 0; i < n; ++i) v.push_back(uint8_t(x >> (8 * i))); };
    for (const auto& [name, bytes] : members) {
      std::string fname = name + ".npy";
      if (bytes.size() >= 0xffffffffu || off >= 0xffffffffu) Bad(path + ": outputs over 4 GiB are not supported");
      bool utf8 = std::any_of(fname.begin(), fname.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
      uint32_t crc = Crc32(bytes.data(), bytes.size());
      std::vector<uint8_t> h;  // local file header; DOS date 1980-01-01 00:00
      put(h, 0x04034b50, 4); put(h, 20, 2); put(h, utf8 ? 0x800 : 0, 2); put(h, 0, 2); put(h, 0, 2); put(h, 0x21, 2);
      put(h, crc, 4); put(h, bytes.size(), 4); put(h, bytes.size(), 4); put(h, fname.size(), 2); put(h, 0, 2);
      put(cd, 0x02014b50, 4); put(cd, 0x0314, 2 /* made by Unix */); put(cd, 20, 2); put(cd, utf8 ? 0x800 : 0, 2); put(cd, 0, 2); put(cd, 0, 2);
      put(cd, 0x21, 2); put(cd, crc, 4); put(cd, bytes.size(), 4); put(cd, bytes.size(), 4); put(cd, fname.size(), 2);
      put(cd, 0, 2); put(cd, 0, 2); put(cd, 0, 2); put(cd, 0, 2); put(cd, 0x81a4u << 16, 4); put(cd, off, 4);
      cd.insert(cd.end(), fname.begin(), fname.end());
      WriteAll(fd, h.data(), h.size(), path);
      WriteAll(fd, fname.data(), fname.size(), path);
      WriteAll(fd, bytes.data(), bytes.size(), path);
      off += h.size() + fname.size() + bytes.size();
    }
    if (off >= 0xffffffffu || members.size() >= 0xffff) Bad(path + ": outputs over 4 GiB are not supported");
    std::vector<uint8_t> end;
    put(end, 0x06054b50, 4); put(end, 0, 2); put(end, 0, 2); put(end, members.size(), 2); put(end, members.size(), 2);
    put(end, cd.size(), 4); put(end, off, 4); put(end, 0, 2);
    WriteAll(fd, cd.data(), cd.size(), path);
    WriteAll(fd, end.data(), end.size(), path);
    if (::fsync(fd) != 0) Bad(path + ": cannot be written (" + std::strerror(errno) + ")");
    ::close(fd);
    fd = -1;
    if (::rename(tmp.c_str(), path.c_str()) != 0) Bad(path + ": cannot be written (" + std::strerror(errno) + ")");
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) { ::fsync(dfd); ::close(dfd); }
}

// -- the signature ---------------------------------------------------------------------------------
struct Dim { bool is_int = false, unknown = false; int64_t value = 0; std::string sym; };
struct Spec { std::string name; const ElemType* type; bool ranked = false; std::vector<Dim> shape; std::string text; };
struct Assumption { Dim lhs; std::string op; int64_t rhs; std::string why; };
struct Signature {
  std::vector<Spec> inputs, outputs;
  std::vector<Assumption> assumptions;
  std::string target_name, arch;
  std::vector<std::string> features;
};

ffi::Any Field(const ffi::json::Object& o, const char* key) {
  auto it = o.find(ffi::String(key));
  return it == o.end() ? ffi::Any() : (*it).second;
}
std::string Str(const ffi::Any& a) { auto s = a.try_cast<ffi::String>(); return s ? std::string(*s) : std::string(); }

Dim ParseDim(const ffi::Any& a) {
  Dim d;
  if (a.type_index() == ffi::TypeIndex::kTVMFFINone) { d.unknown = true; return d; }
  if (auto i = a.try_cast<int64_t>()) { d.is_int = true; d.value = *i; return d; }
  d.sym = Str(a);
  return d;
}
std::string DimText(const Dim& d) { return d.unknown ? "?" : d.is_int ? std::to_string(d.value) : d.sym; }

std::vector<Spec> ParseSpecs(const ffi::Any& list) {
  std::vector<Spec> out;
  auto arr = list.try_cast<ffi::json::Array>();
  if (!arr) Bad("malformed signature: inputs and outputs must be lists");
  for (const ffi::Any& item : *arr) {
    auto o = item.try_cast<ffi::json::Object>();
    if (!o) Bad("malformed signature: a tensor spec must be an object");
    Spec s;
    s.name = Str(Field(*o, "name"));
    s.type = &TypeOf(Str(Field(*o, "dtype")));
    ffi::Any shape = Field(*o, "shape");
    s.text = s.type->optc;
    if (shape.type_index() != ffi::TypeIndex::kTVMFFINone) {
      s.ranked = true;
      s.text += "[";
      for (const ffi::Any& d : shape.cast<ffi::json::Array>()) {
        s.shape.push_back(ParseDim(d));
        s.text += (s.shape.size() > 1 ? ", " : "") + DimText(s.shape.back());
      }
      s.text += "]";
    }
    out.push_back(s);
  }
  return out;
}

Signature ParseSignature(const std::string& text) {
  ffi::String err;
  ffi::json::Value v = ffi::json::Parse(ffi::String(text), &err);
  auto o = v.try_cast<ffi::json::Object>();
  if (!err.empty() || !o) Bad("the embedded signature is not valid JSON (" + std::string(err) + ")");
  Signature sig;
  sig.inputs = ParseSpecs(Field(*o, "inputs"));
  sig.outputs = ParseSpecs(Field(*o, "outputs"));
  if (auto as = Field(*o, "assumptions").try_cast<ffi::json::Array>()) {
    for (const ffi::Any& item : *as) {
      auto a = item.cast<ffi::json::Object>();
      sig.assumptions.push_back({ParseDim(Field(a, "lhs")), Str(Field(a, "op")), Field(a, "rhs").cast<int64_t>(),
                                 Str(Field(a, "why"))});
    }
  }
  if (auto t = Field(*o, "target").try_cast<ffi::json::Object>()) {
    sig.target_name = Str(Field(*t, "name"));
    sig.arch = Str(Field(*t, "arch"));
    if (auto fs = Field(*t, "features").try_cast<ffi::json::Array>())
      for (const ffi::Any& f : *fs) sig.features.push_back(Str(f));
  }
  return sig;
}

bool IsIdentifier(const std::string& s) {
  if (s.empty() || !(std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_')) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

// The value of a dim (an int, a symbol or a product "2*batch*seq") under `b`; false if unknown.
bool EvalDim(const Dim& d, const std::map<std::string, int64_t>& b, int64_t* out) {
  if (d.unknown) return false;
  if (d.is_int) { *out = d.value; return true; }
  int64_t v = 1;
  std::stringstream ss(d.sym);
  for (std::string f; std::getline(ss, f, '*');) {
    f = OneLine(f);
    std::string digits = !f.empty() && f[0] == '-' ? f.substr(1) : f;
    if (!digits.empty() && digits.find_first_not_of("0123456789") == std::string::npos) v *= std::stoll(f);
    else if (IsIdentifier(f) && b.count(f)) v *= b.at(f);
    else return false;
  }
  *out = v;
  return true;
}

std::string Bindings(const std::map<std::string, int64_t>& b) {
  std::string s;
  for (const auto& [k, v] : b) s += (s.empty() ? "" : ", ") + k + "=" + std::to_string(v);
  return s.empty() ? "no symbolic dims" : s;
}

// Checks the given arrays against the signature (ir/signature.py's rules and wording) and
// converts them in place to the module's storage form.
void CheckInputs(const Signature& sig, std::map<std::string, Array>& given) {
  std::vector<std::string> missing, unexpected;
  std::set<std::string> names;
  std::string declared;
  for (const Spec& s : sig.inputs) {
    names.insert(s.name);
    declared += (declared.empty() ? "" : ", ") + Q(s.name);
    if (!given.count(s.name)) missing.push_back(Q(s.name));
  }
  for (const auto& [k, v] : given) if (!names.count(k)) unexpected.push_back(Q(k));
  if (!missing.empty() || !unexpected.empty()) {
    std::string m;
    auto join = [](const std::vector<std::string>& v) { std::string r; for (auto& x : v) r += (r.empty() ? "" : ", ") + x; return r; };
    if (!missing.empty()) m = "missing input(s) " + join(missing);
    if (!unexpected.empty()) m += (m.empty() ? "" : "; ") + std::string("unexpected input(s) ") + join(unexpected);
    Bad(m + " (the graph takes " + (declared.empty() ? "no inputs" : declared) + ")");
  }
  std::map<std::string, int64_t> bind;
  std::map<std::string, std::string> bound_by;
  for (const Spec& s : sig.inputs) {
    Array& a = given[s.name];
    const ElemType& t = *s.type;
    bool ok = (a.kind == t.kind && a.size == t.size) || (t.stored && a.kind == 'V' && a.size == t.size);
    if (!ok)
      Bad("input " + Q(s.name) + ": expected element type " + t.optc + StorageHint(t) + ", got " + NumpyName(a.kind, a.size));
    if (a.kind == 'b') for (uint8_t& x : a.data) x = x != 0;
    if (t.stored && t.bits > 0 && t.bits < 8) {  // sub-byte values: from ml_dtypes bytes, range-checked
      int lo = t.sign ? -(1 << (t.bits - 1)) : 0, hi = t.sign ? (1 << (t.bits - 1)) - 1 : (1 << t.bits) - 1;
      for (size_t i = 0; i < a.data.size(); ++i) {
        uint8_t& x = a.data[i];
        if (a.kind == 'V' || t.optc[0] == 'f') {  // raw ml_dtypes byte: the value in the low bits
          x &= uint8_t((1 << t.bits) - 1);
          if (t.sign && x > hi) x = uint8_t(int(x) - (1 << t.bits));
        } else {
          int v = t.sign ? int(int8_t(x)) : int(x);
          if (v < lo || v > hi)
            Bad("input " + Q(s.name) + ": element type " + t.optc + " holds " + std::to_string(lo) + ".." +
                std::to_string(hi) + ", got " + std::to_string(v) + " at flat index " + std::to_string(i));
        }
      }
    }
    a.kind = t.kind;
    if (!s.ranked) continue;
    if (a.shape.size() != s.shape.size())
      Bad("input " + Q(s.name) + ": expected rank " + std::to_string(s.shape.size()) + " " + s.text + ", got shape " + Shape(a.shape));
    for (size_t axis = 0; axis < s.shape.size(); ++axis) {
      const Dim& d = s.shape[axis];
      int64_t n = a.shape[axis];
      if (n == 0 && !d.is_int)
        Bad("input " + Q(s.name) + ": dim " + std::to_string(axis) + " (" + DimText(d) + ") is 0; a dim not fixed at "
            "compile time must be >= 1 (zero-size inputs are not supported)");
      if (d.unknown) continue;
      if (d.is_int) {
        if (d.value != n)
          Bad("input " + Q(s.name) + ": dim " + std::to_string(axis) + " must be " + std::to_string(d.value) + " (" +
              s.text + "), got shape " + Shape(a.shape));
      } else if (IsIdentifier(d.sym)) {
        if (bind.count(d.sym) && bind[d.sym] != n)
          Bad("input " + Q(s.name) + ": dim " + std::to_string(axis) + " is " + Q(d.sym) + "=" + std::to_string(n) +
              ", but " + bound_by[d.sym] + " bound " + Q(d.sym) + "=" + std::to_string(bind[d.sym]));
        if (!bind.count(d.sym)) { bind[d.sym] = n; bound_by[d.sym] = "input " + Q(s.name); }
      }
    }
  }
  for (const Spec& s : sig.inputs) {  // products of symbols, once every symbol is bound
    for (size_t axis = 0; s.ranked && axis < s.shape.size(); ++axis) {
      const Dim& d = s.shape[axis];
      int64_t want;
      if (d.is_int || d.unknown || IsIdentifier(d.sym) || !EvalDim(d, bind, &want)) continue;
      if (want != given[s.name].shape[axis])
        Bad("input " + Q(s.name) + ": dim " + std::to_string(axis) + " is " + Q(d.sym) + "=" + std::to_string(want) +
            " by the other inputs, got " + std::to_string(given[s.name].shape[axis]));
    }
  }
  for (const Assumption& a : sig.assumptions) {
    int64_t v;
    if (!EvalDim(a.lhs, bind, &v)) continue;
    bool holds = a.op == "<=" ? v <= a.rhs : a.op == ">=" ? v >= a.rhs : v == a.rhs;
    if (!holds)
      Bad("inputs bind " + Bindings(bind) + ", but the compiled model needs " + DimText(a.lhs) + " " + a.op + " " +
          std::to_string(a.rhs) + " (" + a.why + ")");
  }
}

// -- the host --------------------------------------------------------------------------------------
std::string HostArch() {
#if defined(__x86_64__)
  return "x86_64";
#elif defined(__aarch64__)
  return "aarch64";
#else
  return "unknown";
#endif
}

// CPU features this CPU has, in /proc/cpuinfo spelling (plus, on aarch64, the kernel's hwcaps,
// which qemu-user emulates faithfully where it does not emulate /proc/cpuinfo).
std::set<std::string> HostFeatures() {
  std::set<std::string> out;
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("flags", 0) != 0 && line.rfind("Features", 0) != 0) continue;
    std::stringstream ss(line.substr(line.find(':') == std::string::npos ? line.size() : line.find(':') + 1));
    for (std::string w; ss >> w;) out.insert(w);
  }
#if defined(__aarch64__)
  const char* hw1[] = {"fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp",
                       "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512",
                       "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg"};
  const char* hw2[] = {"dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2", "frint",
                       "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng", "bti"};
  unsigned long h1 = getauxval(AT_HWCAP), h2 = getauxval(AT_HWCAP2);
  for (int i = 0; i < 32; ++i) if (h1 & (1ul << i)) out.insert(hw1[i]);
  for (int i = 0; i < 18; ++i) if (h2 & (1ul << i)) out.insert(hw2[i]);
  // LLVM spellings a target may record, as the kernel names them
  const std::pair<const char*, const char*> alias[] = {{"neon", "asimd"}, {"dotprod", "asimddp"}, {"fullfp16", "asimdhp"},
                                                       {"fp16", "fphp"}, {"crc", "crc32"}, {"lse", "atomics"},
                                                       {"rdm", "asimdrdm"}, {"fp-armv8", "fp"}};
  for (auto& [llvm, kernel] : alias) if (out.count(kernel)) out.insert(llvm);
#endif
  return out;
}

void CheckHost(const Signature& sig) {
  std::string name = sig.target_name.empty() ? "?" : sig.target_name;
  if (!sig.arch.empty() && sig.arch != HostArch())
    Bad("compiled for " + name + " (" + sig.arch + "); this machine is " + HostArch());
  if (sig.features.empty()) return;
  std::set<std::string> have = HostFeatures();
  if (have.empty()) return;  // nothing to compare with (no /proc): trust the artifact
  std::string missing;
  for (const std::string& f : sig.features) if (!have.count(f)) missing += (missing.empty() ? "" : ", ") + f;
  if (!missing.empty()) Bad("compiled for " + name + ", which needs CPU features " + missing + " that this CPU lacks");
}

int UsableCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? int(n) : 1;
}

std::string ExeDir(const char* argv0) {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  std::string p = n > 0 ? std::string(buf, size_t(n)) : std::string(argv0);
  size_t s = p.find_last_of('/');
  return s == std::string::npos ? "." : p.substr(0, s);
}

// -- the model ---------------------------------------------------------------------------------------
struct CpuAlloc {  // input tensors: 64-byte aligned host memory
  void AllocData(DLTensor* t) {
    size_t n = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, n ? n : 64);
    if (!t->data) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

ffi::Tensor ToTensor(const Array& a, const ElemType& t) {
  DLDataType dt = ffi::StringToDLDataType(t.tvm);
  ffi::Tensor x = ffi::Tensor::FromNDAlloc(CpuAlloc(), ffi::ShapeView(a.shape.data(), a.shape.size()), dt, DLDevice{kDLCPU, 0});
  if (!a.data.empty()) std::memcpy(x.data_ptr(), a.data.data(), a.data.size());
  return x;
}

Array FromTensor(const ffi::Tensor& x, const Spec& s) {
  Array a;
  a.kind = s.type->kind;
  a.size = s.type->size;
  for (int64_t d : x.shape()) a.shape.push_back(d);
  if (x.dtype().bits != s.type->size * 8 || x.dtype().lanes != 1)
    throw Fail(1, "output " + Q(s.name) + ": the module returned " + std::string(ffi::DLDataTypeToString(x.dtype())) +
                      ", the signature says " + s.type->optc);
  if (!x.IsContiguous()) throw Fail(1, "output " + Q(s.name) + ": the module returned a non-contiguous tensor");
  const uint8_t* p = static_cast<const uint8_t*>(x.data_ptr()) + x.byte_offset();
  a.data.assign(p, p + size_t(a.Count()) * size_t(a.size));
  return a;
}

struct Options {
  std::string model, inputs_npz, output;
  std::vector<std::pair<std::string, std::string>> npy;  // name=file.npy
  long repeat = 0, warmup = -1, threads = 0;
  bool signature = false, json = false;
};

long ParseCount(const std::string& flag, const std::string& v, long lo, long hi) {
  char* end = nullptr;
  errno = 0;
  long n = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end || errno || n < lo || n > hi)
    Bad(flag + " must be an integer in " + std::to_string(lo) + ".." + std::to_string(hi) + ", got " + Q(v));
  return n;
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i], value;
    size_t eq = a.find('=');
    bool is_opt = a.size() > 1 && a[0] == '-';
    std::string flag = is_opt && eq != std::string::npos ? a.substr(0, eq) : a;
    auto take = [&]() -> std::string {
      if (is_opt && eq != std::string::npos) return a.substr(eq + 1);
      if (i + 1 >= args.size()) Bad(flag + " needs a value (see optc-run --help)");
      return args[++i];
    };
    if (flag == "-h" || flag == "--help") { std::fputs(kUsage, stdout); std::exit(0); }
    else if (flag == "--model") o.model = take();
    else if (flag == "-o" || flag == "--output") o.output = take();
    else if (flag == "--inputs") o.inputs_npz = take();
    else if (flag == "--repeat") o.repeat = ParseCount("--repeat", take(), 1, 1000000);
    else if (flag == "--warmup") o.warmup = ParseCount("--warmup", take(), 0, 1000000);
    else if (flag == "--threads") o.threads = ParseCount("--threads", take(), 1, UsableCpus());
    else if (flag == "--signature") o.signature = true;
    else if (flag == "--json") o.json = true;
    else if (is_opt) Bad("unknown option " + Q(flag) + " (see optc-run --help)");
    else if (eq != std::string::npos && eq > 0) o.npy.push_back({a.substr(0, eq), a.substr(eq + 1)});
    else if (o.inputs_npz.empty()) o.inputs_npz = a;
    else Bad("unexpected argument " + Q(a) + ": give one .npz file or NAME=FILE.npy arguments (see optc-run --help)");
  }
  if (!o.inputs_npz.empty() && !o.npy.empty()) Bad("give either an .npz file or NAME=FILE.npy arguments, not both");
  if (!o.output.empty()) {
    struct stat st;
    if (o.output.size() < 5 || o.output.compare(o.output.size() - 4, 4, ".npz") != 0)
      Bad("-o " + o.output + ": the outputs file must end in .npz");
    if (stat(o.output.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) Bad("-o " + o.output + ": is a folder");
    size_t s = o.output.find_last_of('/');
    std::string dir = s == std::string::npos ? "." : (s == 0 ? "/" : o.output.substr(0, s));
    if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) Bad("-o " + o.output + ": folder " + dir + " does not exist");
  }
  return o;
}

// Loads the library as python/tvm/runtime/vm.py does; returns the VM and the embedded signature.
ffi::Module LoadModel(const std::string& path, std::string* signature) {
  try {
    ffi::Module lib = ffi::Module::LoadFromFile(path);
    auto load = lib->GetFunction("vm_load_executable", true);
    if (!load) Bad(path + ": not a TVM Relax VM executable");
    ffi::Module vm = (*load)().cast<ffi::Module>();
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2 /* pooled allocator */);
    auto sig_fn = vm->GetFunction("optc_signature");
    if (!sig_fn) Bad(path + ": the library carries no optc signature (built by an older optc, or not by optc): recompile it");
    *signature = std::string((*sig_fn)().cast<ffi::String>());
    return vm;
  } catch (const ffi::Error& e) {
    Bad(path + ": cannot load the compiled library (" + OneLine(e.message()) + ")");
  }
}

// -- RPC server: `optc-run --rpc-server` -----------------------------------------------------------
// Serves TVM's RPC protocol so that a client (`optc bench --remote`, tvm.rpc.connect) can upload
// a model, run it on this machine's CPU and time it, with no Python here: the handshake (and the
// tracker registration) of python/tvm/rpc/server.py, then the runtime's own "rpc.ServerLoop" on
// the socket. Each session runs in a forked child with its own work folder (uploads land there;
// removed when the session ends); sessions are served one after another until the server is
// killed (SIGTERM/SIGINT end the current session too).
const char* kRpcUsage = R"(usage: optc-run --rpc-server [--host H] [--port P] [--port-end E] [--key K]
                        [--tracker HOST:PORT] [--custom-addr A] [--work-dir D] [--threads N]

Serves TVM's RPC protocol on a TCP port, so `optc bench ARTIFACT --remote HOST:PORT` (or TVM's
tvm.rpc.connect) can upload a model, run and time it on this machine. One session at a time, each
in its own process and temporary work folder; runs until killed. Anyone who can reach the port
can run code as this user: serve on a trusted network only.

options:
  --host H             address to listen on (default 0.0.0.0; 127.0.0.1 for this machine only)
  --port P             first port to try (default 9090; 0: any free port)
  --port-end E         try ports P .. E-1 until one is free (default P+1: P only)
  --key K              the device key: clients must give it (a tracker hands out K:<random>)
  --tracker HOST:PORT  register with a TVM RPC tracker under --key (required then)
  --custom-addr A      the address the tracker tells clients (default: as the tracker sees us)
  --work-dir D         where session folders are made (default $TMPDIR, else /tmp)
  --threads N          worker threads of the TVM runtime in each session (clients may change it)

The first line on stdout is `optc-run: rpc server listening on HOST:PORT ...` (the port really
bound); each session is logged on stderr.
)";

constexpr int32_t kRpcMagic = 0xff271, kTrackerMagic = 0x2f271;
enum TrackerCode { kTrackerSuccess = 0, kTrackerPut = 3, kTrackerUpdateInfo = 5, kTrackerGetPendingMatchKeys = 7 };

struct RpcOptions {
  std::string host = "0.0.0.0", key, tracker, custom_addr, work_dir;
  long port = 9090, port_end = -1, threads = 0;
};

volatile sig_atomic_t g_stop = 0;
volatile pid_t g_child = 0;
void OnStopSignal(int) {
  g_stop = 1;
  if (g_child > 0) ::kill(g_child, SIGTERM);
}

void Log(const std::string& m) {
  std::fprintf(stderr, "optc-run: rpc: %s\n", Printable(OneLine(m)).c_str());
  std::fflush(stderr);
}

std::pair<std::string, long> HostPort(const std::string& flag, const std::string& v) {
  size_t c = v.rfind(':');
  std::string host = c == std::string::npos ? "" : v.substr(0, c);
  if (host.size() > 1 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) Bad(flag + " must be HOST:PORT, got " + Q(v));
  return {host, ParseCount(flag + " port", v.substr(c + 1), 1, 65535)};
}

RpcOptions ParseRpcArgs(const std::vector<std::string>& args) {
  RpcOptions o;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    size_t eq = a.find('=');
    std::string flag = a.size() > 1 && a[0] == '-' && eq != std::string::npos ? a.substr(0, eq) : a;
    auto take = [&]() -> std::string {
      if (eq != std::string::npos && flag != a) return a.substr(eq + 1);
      if (i + 1 >= args.size()) Bad(flag + " needs a value (see optc-run --rpc-server --help)");
      return args[++i];
    };
    if (flag == "-h" || flag == "--help") { std::fputs(kRpcUsage, stdout); std::exit(0); }
    else if (flag == "--rpc-server") continue;
    else if (flag == "--host") o.host = take();
    else if (flag == "--port") o.port = ParseCount("--port", take(), 0, 65535);
    else if (flag == "--port-end") o.port_end = ParseCount("--port-end", take(), 1, 65536);
    else if (flag == "--key") o.key = take();
    else if (flag == "--tracker") o.tracker = take();
    else if (flag == "--custom-addr") o.custom_addr = take();
    else if (flag == "--work-dir") o.work_dir = take();
    else if (flag == "--threads") o.threads = ParseCount("--threads", take(), 1, UsableCpus());
    else Bad("--rpc-server: unknown or misplaced argument " + Q(a) + " (see optc-run --rpc-server --help)");
  }
  if (o.port_end < 0) o.port_end = o.port + 1;
  if (o.port != 0 && o.port_end <= o.port) Bad("--port-end must be greater than --port");
  if (o.host.empty()) Bad("--host must not be empty");
  if (o.key.find_first_of(" \t\n") != std::string::npos) Bad("--key must not contain spaces");
  if (!o.tracker.empty()) {
    HostPort("--tracker", o.tracker);
    if (o.key.empty()) Bad("--tracker needs --key: the device key clients ask the tracker for");
  }
  if (o.work_dir.empty()) o.work_dir = std::getenv("TMPDIR") && *std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp";
  struct stat st;
  if (stat(o.work_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) Bad("--work-dir " + o.work_dir + ": no such folder");
  return o;
}

// -- sockets: every wait is bounded (ms < 0: forever) --
bool WaitFd(int fd, short events, int ms) {
  pollfd p{fd, events, 0};
  for (;;) {
    int r = ::poll(&p, 1, ms);
    if (r < 0 && errno == EINTR) { if (g_stop) return false; continue; }
    return r > 0;
  }
}
bool RecvAll(int fd, void* buf, size_t n, int ms) {
  char* p = static_cast<char*>(buf);
  while (n) {
    if (!WaitFd(fd, POLLIN, ms)) return false;
    ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r; n -= size_t(r);
  }
  return true;
}
bool SendAll(int fd, const void* buf, size_t n) {
  const char* p = static_cast<const char*>(buf);
  while (n) {
    ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r; n -= size_t(r);
  }
  return true;
}
bool SendInt(int fd, int32_t v) { uint8_t b[4]; for (int i = 0; i < 4; ++i) b[i] = uint8_t(uint32_t(v) >> (8 * i)); return SendAll(fd, b, 4); }
bool RecvInt(int fd, int32_t* v, int ms) {
  uint8_t b[4];
  if (!RecvAll(fd, b, 4, ms)) return false;
  *v = int32_t(uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16 | uint32_t(b[3]) << 24);
  return true;
}
bool SendString(int fd, const std::string& s) { return SendInt(fd, int32_t(s.size())) && SendAll(fd, s.data(), s.size()); }

std::string PeerName(const sockaddr_storage& a) {
  char host[NI_MAXHOST] = "?", port[NI_MAXSERV] = "?";
  getnameinfo(reinterpret_cast<const sockaddr*>(&a), sizeof(a), host, sizeof(host), port, sizeof(port),
              NI_NUMERICHOST | NI_NUMERICSERV);
  return std::string(host).find(':') != std::string::npos ? "[" + std::string(host) + "]:" + port
                                                          : std::string(host) + ":" + port;
}

// Listens on the first free port of [port, port_end) (any free port for 0); returns the fd and port.
int Listen(const RpcOptions& o, long* bound) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  int rc = getaddrinfo(o.host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || !res) Bad("--host " + o.host + ": " + gai_strerror(rc));
  std::string last = "no address";
  long first = o.port, end = o.port == 0 ? 1 : o.port_end;
  for (long port = first; port < end; ++port) {
    int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) { last = std::strerror(errno); break; }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_storage addr{};
    std::memcpy(&addr, res->ai_addr, res->ai_addrlen);
    if (addr.ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(&addr)->sin_port = htons(uint16_t(port));
    else reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port = htons(uint16_t(port));
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), res->ai_addrlen) == 0 && ::listen(fd, 16) == 0) {
      socklen_t len = sizeof(addr);
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
      *bound = addr.ss_family == AF_INET ? ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port)
                                         : ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
      freeaddrinfo(res);
      return fd;
    }
    last = std::strerror(errno);
    ::close(fd);
  }
  freeaddrinfo(res);
  if (o.port == 0 || o.port_end == o.port + 1) Bad("cannot listen on " + o.host + ":" + std::to_string(o.port) + " (" + last + ")");
  Bad("cannot listen on " + o.host + " at any port in " + std::to_string(o.port) + ".." + std::to_string(o.port_end - 1) +
      " (" + last + ")");
}

int ConnectTcp(const std::string& host, long port, int ms, std::string* why) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0 || !res) { *why = gai_strerror(rc); return -1; }
  int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) != 0 && errno != EINPROGRESS) {
    *why = std::strerror(errno); ::close(fd); fd = -1;
  } else if (fd >= 0) {
    int err = 0;
    socklen_t len = sizeof(err);
    if (!WaitFd(fd, POLLOUT, ms)) { *why = "timed out"; ::close(fd); fd = -1; }
    else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err) { *why = std::strerror(err); ::close(fd); fd = -1; }
    else fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  } else {
    *why = std::strerror(errno);
  }
  freeaddrinfo(res);
  return fd;
}

// -- the tracker (python/tvm/rpc/tracker.py): length-prefixed JSON over TCP --
std::string JsonString(const std::string& s) { return std::string(ffi::json::Stringify(ffi::String(s))); }

struct TrackerLink {
  std::string host;
  long port = 0;
  int fd = -1;
  bool warned = false;
  void Close() { if (fd >= 0) ::close(fd); fd = -1; }
  // Sends a request, returns the parsed reply (None on a broken link, which is then closed).
  ffi::Any Call(const std::string& json) {
    ffi::Any none;
    int32_t n;
    if (fd < 0 || !SendString(fd, json) || !RecvInt(fd, &n, 30000) || n < 0 || n > (1 << 24)) { Close(); return none; }
    std::string buf(size_t(n), '\0');
    if (n && !RecvAll(fd, &buf[0], size_t(n), 30000)) { Close(); return none; }
    ffi::String err;
    ffi::json::Value v = ffi::json::Parse(ffi::String(buf), &err);
    if (!err.empty()) { Close(); return none; }
    return v;
  }
  bool Ok(const std::string& json) {
    ffi::Any r = Call(json);
    auto code = r.try_cast<int64_t>();
    if (!code || *code != kTrackerSuccess) { Close(); return false; }
    return true;
  }
};

std::string NewMatchKey(const std::string& key) {
  static std::mt19937_64 rng(std::random_device{}() ^ uint64_t(getpid()) << 20);
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.15f", std::uniform_real_distribution<double>(0, 1)(rng));
  return key + ":" + buf;
}

// Connects and registers (UPDATE_INFO, then PUT with `*matchkey`, a fresh one); false if not now.
bool TrackerRegister(TrackerLink& t, const RpcOptions& o, long port, std::string* matchkey) {
  if (t.fd < 0) {
    std::string why;
    t.fd = ConnectTcp(t.host, t.port, 10000, &why);
    int32_t magic = 0;
    if (t.fd >= 0 && (!SendInt(t.fd, kTrackerMagic) || !RecvInt(t.fd, &magic, 10000) || magic != kTrackerMagic)) {
      why = "not a TVM RPC tracker";
      t.Close();
    }
    if (t.fd < 0) {
      if (!t.warned) Log("cannot reach the tracker " + o.tracker + " (" + why + "); retrying every 5 s");
      t.warned = true;
      return false;
    }
    std::string addr = o.custom_addr.empty() ? "null" : JsonString(o.custom_addr);
    if (!t.Ok("[" + std::to_string(kTrackerUpdateInfo) + ", {\"key\": " + JsonString("server:" + o.key) +
              ", \"addr\": [" + addr + ", " + std::to_string(port) + "]}]"))
      return false;
    Log("registered with the tracker " + o.tracker + " as " + Q(o.key));
    t.warned = false;
  }
  *matchkey = NewMatchKey(o.key);
  std::string addr = o.custom_addr.empty() ? "null" : JsonString(o.custom_addr);
  return t.Ok("[" + std::to_string(kTrackerPut) + ", " + JsonString(o.key) + ", [" + std::to_string(port) + ", " +
              JsonString(*matchkey) + "], " + addr + "]");
}

// Whether the tracker still holds `matchkey` for a client (false: handed out, or the link broke).
bool TrackerPending(TrackerLink& t, const std::string& matchkey, bool* broken) {
  ffi::Any r = t.Call("[" + std::to_string(kTrackerGetPendingMatchKeys) + "]");
  auto keys = r.try_cast<ffi::json::Array>();
  *broken = !keys;
  if (!keys) { t.Close(); return false; }
  for (const ffi::Any& k : *keys) if (Str(k) == matchkey) return true;
  return false;
}

// -- one session, in a forked child --
std::string g_work;  // the session's folder

std::string WorkPath(const std::string& name) { return !name.empty() && name[0] == '/' ? name : g_work + "/" + name; }

std::string RpcInfo() {
  std::string features;
  for (const std::string& f : HostFeatures()) features += (features.empty() ? "" : ", ") + JsonString(f);
  const char* env = std::getenv("TVM_NUM_THREADS");
  return "{\"server\": \"optc-run\", \"arch\": " + JsonString(HostArch()) + ", \"cpus\": " + std::to_string(UsableCpus()) +
         ", \"tvm_num_threads\": " + (env ? JsonString(env) : "null") + ", \"tvm\": " + JsonString(OPTC_TVM_VERSION) +
         ", \"tvm_ffi\": " + JsonString(OPTC_TVM_FFI_VERSION) + ", \"features\": [" + features + "]}";
}

void RegisterServerFunctions() {
  auto err = [](const std::string& m) { return ffi::Error("ValueError", m, ""); };
  ffi::Function::SetGlobal("tvm.rpc.server.workpath", ffi::Function::FromTyped([](std::string p) { return WorkPath(p); }), true);
  ffi::Function::SetGlobal("tvm.rpc.server.listdir", ffi::Function::FromTyped([](std::string p) {
    std::string out;
    if (DIR* d = ::opendir(WorkPath(p).c_str())) {
      while (dirent* e = ::readdir(d)) if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, "..")) out += std::string(e->d_name) + ",";
      ::closedir(d);
    }
    return out;
  }), true);
  ffi::Function::SetGlobal("tvm.rpc.server.load_module", ffi::Function::FromTyped([err](std::string name) {
    std::string path = WorkPath(name);
    std::ifstream f(path, std::ios::binary);
    if (!f) throw err(name + ": no such file in the session folder (upload it first)");
    unsigned char h[20] = {0};
    f.read(reinterpret_cast<char*>(h), 20);
    if (f.gcount() == 20 && std::memcmp(h, "\x7f" "ELF", 4) == 0) {
      int m = h[5] == 1 ? h[18] | h[19] << 8 : h[19] | h[18] << 8;
      std::string arch = m == 62 ? "x86_64" : m == 183 ? "aarch64" : "machine " + std::to_string(m);
      if (arch != HostArch()) throw err(name + " is an " + arch + " library; this machine is " + HostArch());
    }
    try {
      return ffi::Module::LoadFromFile(path);
    } catch (const ffi::Error& e) {
      throw err(name + ": cannot load the compiled library (" + OneLine(e.message()) + ")");
    }
  }), true);
  ffi::Function::SetGlobal("optc.rpc.info", ffi::Function::FromTyped([]() { return RpcInfo(); }), true);
  // The session's worker threads: TVM sizes its pool from TVM_NUM_THREADS when the pool starts (on
  // first use; each session is a fresh process), and runtime.config_threadpool can only lower it.
  ffi::Function::SetGlobal("optc.rpc.set_threads", ffi::Function::FromTyped([](int64_t n) -> int64_t {
    if (n < 1 || n > UsableCpus()) throw ffi::Error("ValueError", "threads must be 1.." + std::to_string(UsableCpus()), "");
    setenv("TVM_NUM_THREADS", std::to_string(n).c_str(), 1);
    if (auto config = ffi::Function::GetGlobal("runtime.config_threadpool")) (*config)(1, n);
    return (*ffi::Function::GetGlobal("runtime.NumThreads"))().cast<int64_t>();
  }), true);
  // "" when a module with this embedded signature can run here, else why not (as optc-run says it).
  ffi::Function::SetGlobal("optc.rpc.check_host", ffi::Function::FromTyped([](std::string sig) -> std::string {
    try {
      CheckHost(ParseSignature(sig));
      return "";
    } catch (const Fail& e) {
      return e.what();
    }
  }), true);
}

int RemoveEntry(const char* path, const struct stat*, int, struct FTW*) { ::remove(path); return 0; }

[[noreturn]] void ServeSession(int conn, double timeout) {
  ::signal(SIGTERM, SIG_DFL);
  ::signal(SIGINT, SIG_DFL);
  if (::chdir(g_work.c_str()) != 0) _exit(3);
  if (timeout > 0) ::alarm(unsigned(std::max(1.0, timeout)));
  int status = 0;
  try {
    RegisterServerFunctions();
    ffi::Function loop = ffi::Function::GetGlobal("rpc.ServerLoop").value();
    loop(static_cast<int64_t>(conn));
  } catch (const ffi::Error& e) {
    Log("session failed: " + e.kind() + ": " + e.message());
    status = 1;
  } catch (const std::exception& e) {
    Log(std::string("session failed: ") + e.what());
    status = 1;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  _exit(status);
}

// Reads the client's handshake (RPC magic, key); answers it. Returns whether to serve, and the
// session timeout the client asked for (" -timeout=S" after its key).
bool Handshake(int conn, const std::string& matchkey, const std::string& key, const std::string& peer, double* timeout) {
  int32_t magic = 0, len = 0;
  if (!RecvInt(conn, &magic, 10000) || magic != kRpcMagic) return false;  // a probe, or not a TVM client
  if (!RecvInt(conn, &len, 10000) || len < 0 || len > 4096) return false;
  std::string text(size_t(len), '\0');
  if (len && !RecvAll(conn, &text[0], size_t(len), 10000)) return false;
  std::stringstream ss(text);
  std::string first, opt;
  ss >> first;
  *timeout = 0;
  while (ss >> opt) if (opt.rfind("-timeout=", 0) == 0) *timeout = std::atof(opt.c_str() + 9);
  if (first != "client:" + matchkey) {
    SendInt(conn, kRpcMagic + 2);  // RPC_CODE_MISMATCH
    Log("refused " + peer + ": key " + Q(first.substr(0, 200)) + " does not match");
    return false;
  }
  return SendInt(conn, kRpcMagic) && SendString(conn, "server:" + key);
}

int ServeRpc(const RpcOptions& o) {
  struct sigaction sa{};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: accept/poll/waitpid return EINTR
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  if (o.threads) setenv("TVM_NUM_THREADS", std::to_string(o.threads).c_str(), 1);
  if (!ffi::Function::GetGlobal("rpc.ServerLoop")) Bad("this TVM runtime has no RPC server (rpc.ServerLoop)");

  long port = 0;
  int lfd = Listen(o, &port);
  std::string shown = o.host.find(':') != std::string::npos ? "[" + o.host + "]" : o.host;
  std::printf("optc-run: rpc server listening on %s:%ld (key %s, %s, %d CPUs)\n", shown.c_str(), port,
              Q(o.key).c_str(), HostArch().c_str(), UsableCpus());
  std::fflush(stdout);

  TrackerLink tracker;
  std::string matchkey = o.key;
  bool registered = false;
  int unmatched = 0;
  if (!o.tracker.empty()) {
    auto hp = HostPort("--tracker", o.tracker);
    tracker.host = hp.first;
    tracker.port = hp.second;
  }
  while (!g_stop) {
    if (!o.tracker.empty()) {
      if (!registered) {
        registered = TrackerRegister(tracker, o, port, &matchkey);
        unmatched = 0;
        if (!registered) {
          for (int i = 0; i < 50 && !g_stop; ++i) ::usleep(100000);
          continue;
        }
      }
      if (!WaitFd(lfd, POLLIN, 2000)) {  // idle: is our key still on offer?
        if (g_stop) break;
        bool broken = false;
        unmatched = TrackerPending(tracker, matchkey, &broken) ? 0 : unmatched + 1;
        if (broken) registered = false;
        else if (unmatched > 3) {  // handed out to a client that never came: offer a fresh key
          registered = TrackerRegister(tracker, o, port, &matchkey);
          unmatched = 0;
        }
        continue;
      }
    }
    sockaddr_storage peer_addr{};
    socklen_t plen = sizeof(peer_addr);
    int conn = ::accept4(lfd, reinterpret_cast<sockaddr*>(&peer_addr), &plen, SOCK_CLOEXEC);
    if (conn < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN) continue;
      Bad(std::string("accept failed (") + std::strerror(errno) + ")");
    }
    std::string peer = PeerName(peer_addr);
    double timeout = 0;
    if (!Handshake(conn, matchkey, o.key, peer, &timeout)) { ::close(conn); continue; }
    int one = 1;
    setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    std::string tmpl = o.work_dir + "/optc-rpc-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data())) {
      Log("cannot make a session folder in " + o.work_dir + " (" + std::strerror(errno) + ")");
      ::close(conn);
      continue;
    }
    g_work = buf.data();
    Log("session from " + peer + (timeout > 0 ? " (timeout " + std::to_string(int(timeout)) + " s)" : ""));
    std::fflush(stdout);
    auto t0 = std::chrono::steady_clock::now();
    pid_t child = ::fork();
    if (child == 0) {
      ::close(lfd);
      if (tracker.fd >= 0) ::close(tracker.fd);
      ServeSession(conn, timeout);
    }
    ::close(conn);
    int status = 0;
    if (child < 0) {
      Log(std::string("cannot start a session (fork: ") + std::strerror(errno) + ")");
    } else {
      g_child = child;
      if (g_stop) ::kill(child, SIGTERM);
      while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {}
      g_child = 0;
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      char took[32];
      std::snprintf(took, sizeof(took), "%.1f s", s);
      std::string how = WIFSIGNALED(status) ? std::string("killed by signal ") + std::to_string(WTERMSIG(status))
                        : WEXITSTATUS(status) ? "failed" : "ended";
      Log("session from " + peer + " " + how + " after " + took);
    }
    ::nftw(g_work.c_str(), RemoveEntry, 16, FTW_DEPTH | FTW_PHYS);
    if (!o.tracker.empty()) registered = registered && tracker.fd >= 0 && TrackerRegister(tracker, o, port, &matchkey);
  }
  ::close(lfd);
  tracker.Close();
  return 0;
}

int Main(int argc, char** argv) {
  std::vector<std::string> all(argv + 1, argv + argc);
  if (std::find(all.begin(), all.end(), "--rpc-server") != all.end()) return ServeRpc(ParseRpcArgs(all));
  Options opt = ParseArgs(argc, argv);
  if (opt.threads) setenv("TVM_NUM_THREADS", std::to_string(opt.threads).c_str(), 1);  // read when the pool starts

  std::string path = opt.model.empty() ? ExeDir(argv[0]) + "/model.so" : opt.model;
  struct stat st;
  if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) path += "/model.so";
  if (stat(path.c_str(), &st) != 0) Bad(path + ": no such compiled library");

  std::string sig_text;
  ffi::Module vm = LoadModel(path, &sig_text);
  if (opt.signature) { std::printf("%s\n", sig_text.c_str()); return 0; }
  Signature sig = ParseSignature(sig_text);
  CheckHost(sig);

  std::map<std::string, Array> inputs;
  if (!opt.inputs_npz.empty()) inputs = ReadNpz(opt.inputs_npz);
  for (const auto& [name, file] : opt.npy) {
    if (inputs.count(name)) Bad("input " + Q(name) + " is given twice");
    std::vector<uint8_t> bytes = ReadFile(file, "");
    if (bytes.size() >= 4 && Le(bytes.data(), 4) == 0x04034b50) Bad(file + ": an .npz file; give it without NAME=");
    inputs[name] = ParseNpy(bytes.data(), bytes.size(), file);
  }
  CheckInputs(sig, inputs);
  std::vector<ffi::Tensor> tensors;
  std::vector<ffi::AnyView> args;
  for (const Spec& s : sig.inputs) tensors.push_back(ToTensor(inputs[s.name], *s.type));
  for (const ffi::Tensor& t : tensors) args.emplace_back(t);
  inputs.clear();

  ffi::Function main_fn = vm->GetFunction("main").value();
  ffi::Any result;
  auto run_once = [&]() {
    try {
      main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    } catch (const ffi::Error& e) {
      if (e.kind() == "OptcCheckError") throw Fail(1, OneLine(e.message()));  // the module's run-time checks
      throw Fail(1, "the compiled model failed: " + e.kind() + ": " + OneLine(e.message()));
    }
  };
  long warmup = opt.warmup >= 0 ? opt.warmup : (opt.repeat ? 1 : 0);
  for (long i = 0; i < warmup; ++i) run_once();
  std::vector<double> ms;
  for (long i = 0; i < std::max(1L, opt.repeat); ++i) {
    auto t0 = std::chrono::steady_clock::now();
    run_once();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }

  std::vector<ffi::Tensor> outs;
  if (auto arr = result.try_cast<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& x : *arr) outs.push_back(x.cast<ffi::Tensor>());
  } else {
    outs.push_back(result.cast<ffi::Tensor>());
  }
  if (outs.size() != sig.outputs.size())
    throw Fail(1, "the module returned " + std::to_string(outs.size()) + " outputs, the signature declares " +
                      std::to_string(sig.outputs.size()));
  std::vector<std::pair<std::string, std::vector<uint8_t>>> members;
  for (size_t i = 0; i < outs.size(); ++i) {
    const Spec& s = sig.outputs[i];
    Array a = FromTensor(outs[i], s);
    if (opt.output.empty() && !opt.json)
      std::printf("%s: %s %s\n", s.name.c_str(), s.type->optc, Shape(a.shape).c_str());
    else
      members.push_back({s.name, NpyBytes(a, *s.type)});
  }
  if (!opt.output.empty()) WriteNpz(opt.output, members);
  if (opt.repeat) {
    std::vector<double> v = ms;
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    double median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    double p90 = v[std::min(n - 1, size_t((9 * n + 9) / 10) - 1)];  // nearest rank
    const char* env = std::getenv("TVM_NUM_THREADS");
    if (opt.json) {
      std::string runs;
      char buf[64];
      for (double x : ms) { std::snprintf(buf, sizeof(buf), "%s%.6f", runs.empty() ? "" : ", ", x); runs += buf; }
      std::printf("{\"runs\": %zu, \"warmup\": %ld, \"threads\": %s, \"median_ms\": %.6f, \"min_ms\": %.6f, "
                  "\"p90_ms\": %.6f, \"runs_ms\": [%s]}\n", n, warmup, env ? JsonString(env).c_str() : "null", median, v[0],
                  p90, runs.c_str());
    } else {
      std::printf("optc-run: %zu runs (warmup %ld, threads %s): median %.3f ms, min %.3f ms, p90 %.3f ms\n", n, warmup,
                  env ? env : "default", median, v[0], p90);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const Fail& e) {
    std::fprintf(stderr, "optc-run: error: %s\n", Printable(OneLine(e.what())).c_str());
    return e.status;
  } catch (const ffi::Error& e) {
    std::fprintf(stderr, "optc-run: error: %s: %s\n", e.kind().c_str(), Printable(OneLine(e.message())).c_str());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "optc-run: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "optc-run: error: %s\n", Printable(OneLine(e.what())).c_str());
    return 1;
  }
}
