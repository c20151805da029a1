// ptx.cpp: the little of PTX the driver stand-in reads (see parse_ptx in standin.h).
//
// cuModuleLoadData receives PTX text from NVRTC. The stand-in does not compile it: the kernels run as the
// host-compiled copies in the emulator. What it needs from the text is each `.entry`'s parameter list (the
// sizes cuLaunchKernel reads from kernelParams, compared with the C++ parameters of the emulator's kernel
// of the same name), the thread-count directives `.maxntid` / `.reqntid` (from __launch_bounds__), and the
// header (`.version`, `.target`, `.address_size`) to reject PTX a CUDA 12.9 driver on an sm_90 GPU would
// reject. Everything else (instructions, .func bodies, globals, debug sections) is skipped unread: a PTX
// syntax error inside a body is not detected, nor is a difference between the PTX and the C++ body.
#include "standin.h"

#include <cctype>
#include <cstdlib>

namespace {

struct Token {
  std::string text;
  int line;
};

bool ident_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$' || c == '%' || c == '.';
}

// Splits PTX into tokens, dropping // and /* */ comments: directives and identifiers (".param",
// "adamw_step_param_0", "%r1"), numbers ("8.8", "0x10"), strings, and single punctuation characters.
std::vector<Token> tokenize(const char* text) {
  std::vector<Token> out;
  int line = 1;
  const char* p = text;
  while (*p) {
    char c = *p;
    if (c == '\n') {
      ++line;
      ++p;
    } else if (std::isspace(static_cast<unsigned char>(c))) {
      ++p;
    } else if (c == '/' && p[1] == '/') {
      while (*p && *p != '\n') ++p;
    } else if (c == '/' && p[1] == '*') {
      p += 2;
      while (*p && !(p[0] == '*' && p[1] == '/')) {
        if (*p == '\n') ++line;
        ++p;
      }
      if (*p) p += 2;
    } else if (c == '"') {
      const char* start = p++;
      while (*p && *p != '"' && *p != '\n') ++p;
      if (*p == '"') ++p;
      out.push_back({std::string(start, p), line});
    } else if (ident_char(c)) {
      const char* start = p;
      while (*p && ident_char(*p)) ++p;
      out.push_back({std::string(start, p), line});
    } else {
      out.push_back({std::string(1, c), line});
      ++p;
    }
  }
  return out;
}

// Bytes of a PTX fundamental type, 0 if it is not one a kernel parameter can have.
uint64_t type_size(const std::string& t) {
  static const struct {
    const char* name;
    uint64_t size;
  } kTypes[] = {
      {".b8", 1},     {".u8", 1},     {".s8", 1},      {".b16", 2},    {".u16", 2},
      {".s16", 2},    {".f16", 2},    {".bf16", 2},    {".b32", 4},    {".u32", 4},
      {".s32", 4},    {".f32", 4},    {".f16x2", 4},   {".bf16x2", 4}, {".b64", 8},
      {".u64", 8},    {".s64", 8},    {".f64", 8},     {".b128", 16},
  };
  for (const auto& k : kTypes)
    if (t == k.name) return k.size;
  return 0;
}

bool parse_uint(const std::string& s, uint64_t* v) {
  if (s.empty() || !std::isdigit(static_cast<unsigned char>(s[0]))) return false;
  char* end = nullptr;
  unsigned long long x = std::strtoull(s.c_str(), &end, 0);
  if (end == nullptr || *end != '\0') return false;
  *v = x;
  return true;
}

struct Parser {
  const std::vector<Token>& toks;
  size_t i = 0;
  std::string* error;

  bool at_end() const { return i >= toks.size(); }
  const std::string& peek() const {
    static const std::string kEnd;
    return at_end() ? kEnd : toks[i].text;
  }
  int line() const { return at_end() ? (toks.empty() ? 1 : toks.back().line) : toks[i].line; }
  bool fail(const std::string& msg) {
    *error = "PTX line " + std::to_string(line()) + ": " + msg;
    return false;
  }
  bool expect(const char* t) {
    if (peek() != t) return fail(std::string("expected '") + t + "', found '" + peek() + "'");
    ++i;
    return true;
  }

  // `.param [.align A] .type [.ptr] [.global|.const|.local|.shared] [.align A] name[[N]]`
  bool param(const std::string& entry, PtxParam* out) {
    if (!expect(".param")) return false;
    uint64_t align = 0;
    while (!at_end() && peek().size() > 1 && peek()[0] == '.') {
      const std::string d = toks[i++].text;
      if (d == ".align") {
        uint64_t a = 0;
        if (!parse_uint(peek(), &a) || a == 0 || (a & (a - 1)) != 0)
          return fail("bad .align '" + peek() + "' in the parameters of " + entry);
        ++i;
        if (align == 0) align = a;
      } else if (type_size(d) != 0) {
        if (!out->type.empty())
          return fail("two types ('" + out->type + "', '" + d + "') for one parameter of " + entry);
        out->type = d;
      } else if (d == ".ptr" || d == ".global" || d == ".const" || d == ".local" || d == ".shared") {
        // pointer attributes (state space, alignment of the pointee): the parameter is still its .u64
      } else {
        return fail("unknown parameter directive '" + d + "' in " + entry);
      }
    }
    if (out->type.empty()) return fail("parameter of " + entry + " without a type");
    if (at_end() || peek() == "," || peek() == ")") return fail("parameter of " + entry + " without a name");
    out->name = toks[i++].text;
    const uint64_t elem = type_size(out->type);
    out->size = elem;
    if (peek() == "[") {
      ++i;
      uint64_t n = 0;
      if (!parse_uint(peek(), &n) || n == 0) return fail("bad array length '" + peek() + "' of " + out->name);
      ++i;
      if (!expect("]")) return false;
      out->array = true;
      out->size = elem * n;
    }
    out->align = align != 0 ? align : elem;
    return true;
  }

  // `.maxntid x[, y[, z]]` and `.reqntid …`
  bool ntid(unsigned dims[3]) {
    for (int d = 0; d < 3; ++d) {
      uint64_t v = 0;
      if (!parse_uint(peek(), &v) || v == 0 || v > 1024) return fail("bad thread count '" + peek() + "'");
      ++i;
      dims[d] = static_cast<unsigned>(v);
      if (peek() != ",") {
        for (int e = d + 1; e < 3; ++e) dims[e] = 1;
        return true;
      }
      ++i;
    }
    return true;
  }

  bool entry(PtxModule* m) {
    PtxEntry e;
    if (at_end() || !(std::isalpha(static_cast<unsigned char>(peek()[0])) || peek()[0] == '_' || peek()[0] == '$'))
      return fail("expected a kernel name after .entry, found '" + peek() + "'");
    e.name = toks[i++].text;
    for (const auto& other : m->entries)
      if (other.name == e.name) return fail("entry " + e.name + " defined twice");
    if (peek() == "(") {
      ++i;
      while (peek() != ")") {
        PtxParam p;
        if (!param(e.name, &p)) return false;
        e.params.push_back(p);
        if (peek() == ",") {
          ++i;
        } else if (peek() != ")") {
          return fail("expected ',' or ')' after parameter " + p.name + " of " + e.name + ", found '" + peek() + "'");
        }
      }
      ++i;
    }
    // Performance directives up to the body.
    while (!at_end() && peek() != "{") {
      const std::string d = toks[i++].text;
      if (d == ".maxntid") {
        if (!ntid(e.maxntid)) return false;
      } else if (d == ".reqntid") {
        if (!ntid(e.reqntid)) return false;
      } else if (d == ".minnctapersm" || d == ".maxnreg" || d == ".maxnctapersm") {
        uint64_t v = 0;
        if (!parse_uint(peek(), &v)) return fail("bad value '" + peek() + "' for " + d + " of " + e.name);
        ++i;
      } else if (d == ".noreturn" || d == ";") {
      } else if (d == ".pragma") {
        while (!at_end() && peek() != ";") ++i;
      } else {
        return fail("unexpected '" + d + "' between the parameters and the body of " + e.name);
      }
    }
    if (at_end()) return fail("entry " + e.name + " has no body");
    m->entries.push_back(e);
    return true;
  }
};

}  // namespace

bool parse_ptx(const char* text, PtxModule* out, std::string* error) {
  const std::vector<Token> toks = tokenize(text);
  Parser p{toks, 0, error};
  bool have_version = false, have_target = false;
  while (!p.at_end()) {
    const std::string t = toks[p.i++].text;
    if (t == ".version") {
      const std::string v = p.peek();
      const size_t dot = v.find('.');
      uint64_t major = 0, minor = 0;
      if (dot == std::string::npos || !parse_uint(v.substr(0, dot), &major) || !parse_uint(v.substr(dot + 1), &minor))
        return p.fail("bad .version '" + v + "'");
      ++p.i;
      out->version_major = static_cast<int>(major);
      out->version_minor = static_cast<int>(minor);
      have_version = true;
    } else if (t == ".target") {
      out->target = p.peek();
      ++p.i;
      uint64_t sm = 0;
      std::string digits;
      if (out->target.rfind("sm_", 0) == 0 || out->target.rfind("compute_", 0) == 0) {
        digits = out->target.substr(out->target.find('_') + 1);
        while (!digits.empty() && !std::isdigit(static_cast<unsigned char>(digits.back()))) digits.pop_back();
      }
      if (!parse_uint(digits, &sm)) return p.fail("bad .target '" + out->target + "'");
      out->target_sm = static_cast<int>(sm);
      have_target = true;
      while (p.peek() == ",") p.i += 2;  // ", debug", ", texmode_independent", …
    } else if (t == ".address_size") {
      uint64_t a = 0;
      if (!parse_uint(p.peek(), &a)) return p.fail("bad .address_size '" + p.peek() + "'");
      ++p.i;
      out->address_size = static_cast<int>(a);
    } else if (t == ".entry") {
      if (!p.entry(out)) return false;
    }
  }
  if (!have_version) {
    *error = "no .version directive (not PTX text?)";
    return false;
  }
  if (!have_target) {
    *error = "no .target directive";
    return false;
  }
  return true;
}
