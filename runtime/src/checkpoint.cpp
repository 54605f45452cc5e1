// safetensors checkpoints (bn2d/checkpoint.h).
//
// The format: an 8-byte little-endian header length N, N bytes of JSON
//   {"__metadata__": {"format": "pt"}, "bn1.weight": {"dtype": "F32", "shape": [64],
//    "data_offsets": [0, 256]}, ...}
// padded with spaces, then the data section that the offsets index. Validation follows the
// reference implementation (huggingface/safetensors, src/tensor.rs): a header of at most 100 MB,
// known dtypes, byte ranges that match shape x dtype size and tile the data section exactly (no
// gap, no overlap, nothing after the last tensor).
#include "bn2d/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "bn2d/errors.h"
#include "internal.h"

namespace bn2d {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit

// ---- The header's JSON: nlohmann::json (Debian's nlohmann-json3-dev), in file order ---------

using Json = nlohmann::ordered_json;

// Parses the header, refusing what the format's reference reader refuses beyond JSON itself: a
// key twice in one object, and nesting deeper than any header needs (a hostile file must not
// exhaust the stack).
Json parse_json(const std::string &text) {
    std::vector<std::set<std::string>> keys;  // of each open object
    auto check = [&](int depth, Json::parse_event_t event, Json &parsed) {
        if (depth > 32) throw Error("header JSON: nested too deeply");
        if (event == Json::parse_event_t::object_start) keys.emplace_back();
        if (event == Json::parse_event_t::object_end) keys.pop_back();
        if (event == Json::parse_event_t::key &&
            !keys.back().insert(parsed.get<std::string>()).second)
            throw Error("key \"" + parsed.get<std::string>() + "\" appears twice");
        return true;
    };
    // nlohmann's reader takes a NUL byte for the end of its input (and would ignore the rest);
    // JSON text has none outside strings, where it would be an unescaped control character.
    if (text.find('\0') != std::string::npos)
        throw Error("header JSON: a NUL byte at byte " + std::to_string(text.find('\0')));
    try {
        return Json::parse(text, check);
    } catch (const Json::exception &e) {
        throw Error(std::string("header JSON: ") + e.what());
    }
}

uint64_t json_uint(const Json &v, const std::string &what) {
    if (!v.is_number_unsigned())
        throw Error(what + " must be a non-negative integer, got " + v.dump());
    return v.get<uint64_t>();
}

// Whether s is well-formed UTF-8 (the format requires it of the header): no overlong forms, no
// surrogates, nothing above U+10FFFF.
bool valid_utf8(const std::string &s) {
    for (size_t i = 0; i < s.size();) {
        const auto b = static_cast<unsigned char>(s[i]);
        int n = 0;
        uint32_t cp = 0;
        if (b < 0x80) {
            ++i;
            continue;
        }
        if ((b & 0xe0) == 0xc0) {
            n = 1;
            cp = b & 0x1f;
        } else if ((b & 0xf0) == 0xe0) {
            n = 2;
            cp = b & 0x0f;
        } else if ((b & 0xf8) == 0xf0) {
            n = 3;
            cp = b & 0x07;
        } else
            return false;
        if (i + n >= s.size()) return false;
        for (int k = 1; k <= n; ++k) {
            const auto c = static_cast<unsigned char>(s[i + k]);
            if ((c & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (c & 0x3f);
        }
        static const uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
        if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000)) return false;
        i += n + 1;
    }
    return true;
}

// Bytes per element of every dtype the format defines (except sub-byte ones).
const std::map<std::string, int> &dtype_sizes() {
    static const std::map<std::string, int> sizes{
        {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
        {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},     {"U32", 4},
        {"F32", 4},  {"F64", 8}, {"I64", 8}, {"U64", 8}};
    return sizes;
}

// ---- Writing JSON ------------------------------------------------------------------------------

std::string json_quote(const std::string &s) {
    std::string out = "\"";
    for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (u < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", u);
            out += buf;
        } else {
            out += c;
        }
    }
    return out + "\"";
}

// ---- Files -------------------------------------------------------------------------------------

struct Header {
    std::vector<SafetensorsEntry> entries;
    uint64_t data_start = 0;  // file offset of the data section
};

uint64_t read_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}

Header parse_header(std::ifstream &f) {
    f.seekg(0, std::ios::end);
    const std::streamoff end = f.tellg();
    if (end < 0) throw Error("cannot read it (not a regular file?)");
    const auto file_size = static_cast<uint64_t>(end);
    f.seekg(0);
    unsigned char len_bytes[8];
    if (file_size < 8 || !f.read(reinterpret_cast<char *>(len_bytes), 8))
        throw Error("truncated: " + std::to_string(file_size) +
                    " bytes, shorter than the 8-byte header length");
    const uint64_t n = read_le64(len_bytes);
    if (n > kMaxHeaderBytes)
        throw Error("header length " + std::to_string(n) +
                    " is over the format's 100 MB limit (not a safetensors file?)");
    if (8 + n > file_size)
        throw Error("truncated: the header claims " + std::to_string(n) + " bytes, the file has " +
                    std::to_string(file_size - 8) + " after the length");
    std::string text(n, '\0');
    if (!f.read(text.data(), static_cast<std::streamsize>(n)))
        throw Error("read error in the header");
    if (text.empty() || text[0] != '{') throw Error("the header is not a JSON object");
    if (!valid_utf8(text)) throw Error("the header is not valid UTF-8");

    const Json doc = parse_json(text);
    if (!doc.is_object()) throw Error("the header is not a JSON object");
    Header h;
    h.data_start = 8 + n;
    const uint64_t data_bytes = file_size - h.data_start;
    for (const auto &[name, v] : doc.items()) {
        if (name == "__metadata__") {
            if (!v.is_object()) throw Error("__metadata__ is not an object");
            for (const auto &[k, m] : v.items())
                if (!m.is_string())
                    throw Error("__metadata__ value of \"" + k + "\" is not a string");
            continue;
        }
        const std::string where = "tensor \"" + name + "\": ";
        if (!v.is_object()) throw Error(where + "not an object");
        SafetensorsEntry e;
        e.name = name;
        bool has_dtype = false, has_shape = false, has_offsets = false;
        for (const auto &[field, fv] : v.items()) {
            if (field == "dtype") {
                if (!fv.is_string()) throw Error(where + "dtype is not a string");
                e.dtype = fv.get<std::string>();
                has_dtype = true;
            } else if (field == "shape") {
                if (!fv.is_array()) throw Error(where + "shape is not an array");
                for (const Json &d : fv) {
                    const uint64_t s = json_uint(d, where + "shape entry");
                    if (s > uint64_t(INT64_MAX)) throw Error(where + "shape entry too large");
                    e.shape.push_back(static_cast<int64_t>(s));
                }
                has_shape = true;
            } else if (field == "data_offsets") {
                if (!fv.is_array() || fv.size() != 2)
                    throw Error(where + "data_offsets is not [begin, end]");
                e.begin = json_uint(fv[0], where + "data_offsets[0]");
                e.end = json_uint(fv[1], where + "data_offsets[1]");
                has_offsets = true;
            } else {
                throw Error(where + "unknown field \"" + field + "\"");
            }
        }
        if (!has_dtype || !has_shape || !has_offsets)
            throw Error(where + "needs dtype, shape and data_offsets");
        const auto size = dtype_sizes().find(e.dtype);
        if (size == dtype_sizes().end()) throw Error(where + "unknown dtype \"" + e.dtype + "\"");
        if (e.end < e.begin) throw Error(where + "data_offsets end before they begin");
        uint64_t bytes = uint64_t(size->second);
        for (int64_t s : e.shape)
            if (__builtin_mul_overflow(bytes, uint64_t(s), &bytes))
                throw Error(where + "shape overflows 64 bits");
        if (bytes != e.end - e.begin)
            throw Error(where + "shape and dtype give " + std::to_string(bytes) +
                        " bytes, data_offsets " + std::to_string(e.end - e.begin));
        h.entries.push_back(std::move(e));
    }
    // The ranges tile [0, data_bytes): sorted by offset, each begins where the last ended.
    std::vector<const SafetensorsEntry *> by_offset;
    for (const SafetensorsEntry &e : h.entries) by_offset.push_back(&e);
    std::stable_sort(by_offset.begin(), by_offset.end(),
                     [](const SafetensorsEntry *a, const SafetensorsEntry *b) {
                         return a->begin < b->begin || (a->begin == b->begin && a->end < b->end);
                     });
    uint64_t covered = 0;
    for (const SafetensorsEntry *e : by_offset) {
        if (e->begin != covered)
            throw Error("tensor \"" + e->name + "\": data_offsets [" + std::to_string(e->begin) +
                        ", " + std::to_string(e->end) + "] " +
                        (e->begin < covered ? "overlap another tensor" : "leave a gap"));
        covered = e->end;
    }
    if (covered > data_bytes)
        throw Error("truncated: the tensors need " + std::to_string(covered) +
                    " bytes of data, the file has " + std::to_string(data_bytes));
    if (covered < data_bytes)
        throw Error(std::to_string(data_bytes - covered) + " bytes after the last tensor's data");
    return h;
}

std::ifstream open_for_reading(const std::string &path) {
    // A directory opens as an ifstream on Linux and then reads as garbage: say what it is.
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        throw Error(std::string("cannot open: ") + std::strerror(errno));
    if (S_ISDIR(st.st_mode)) throw Error("is a directory, not a safetensors file");
    if (!S_ISREG(st.st_mode)) throw Error("not a regular file (a device, pipe or socket)");
    std::ifstream f(path, std::ios::binary);
    if (!f) throw Error(std::string("cannot open: ") + std::strerror(errno));
    return f;
}

// A tensor's bytes, as stored.
std::vector<unsigned char> read_bytes(std::ifstream &f, const Header &h,
                                      const SafetensorsEntry &e) {
    std::vector<unsigned char> bytes(e.end - e.begin);
    f.seekg(static_cast<std::streamoff>(h.data_start + e.begin));
    if (!bytes.empty() &&
        !f.read(reinterpret_cast<char *>(bytes.data()), static_cast<std::streamsize>(bytes.size())))
        throw Error("tensor \"" + e.name + "\": read error");
    return bytes;
}

template<typename T>
T load_le(const unsigned char *p) {
    T v;
    std::memcpy(&v, p, sizeof(T));  // x86-64 and every target we build for are little-endian
    return v;
}

// The file's names of the module dtypes.
constexpr std::pair<DType, const char *> kFloatDtypes[] = {{DType::float64, "F64"},
                                                           {DType::float32, "F32"},
                                                           {DType::bfloat16, "BF16"},
                                                           {DType::float16, "F16"}};

std::optional<DType> float_dtype(const std::string &name) {
    for (const auto &[t, n] : kFloatDtypes)
        if (name == n) return t;
    return std::nullopt;
}

const char *safetensors_dtype(DType t) {
    for (const auto &[d, n] : kFloatDtypes)
        if (d == t) return n;
    return "F32";
}

std::vector<double> decode_floats(const std::vector<unsigned char> &b, const SafetensorsEntry &e) {
    const std::optional<DType> t = float_dtype(e.dtype);
    if (!t)
        throw Error("tensor \"" + e.name + "\" is " + e.dtype + ": expected F64, F32, BF16 or F16");
    const size_t size = static_cast<size_t>(dtype_size(*t));
    std::vector<double> out;
    for (size_t i = 0; i + size <= b.size(); i += size)
        out.push_back(detail::load_element(b.data() + i, *t));
    return out;
}

int64_t decode_count(const std::vector<unsigned char> &b, const SafetensorsEntry &e) {
    const std::string &t = e.dtype;
    const unsigned char *p = b.data();
    if (t == "I64") return load_le<int64_t>(p);
    if (t == "I32") return load_le<int32_t>(p);
    if (t == "I16") return load_le<int16_t>(p);
    if (t == "I8") return load_le<int8_t>(p);
    if (t == "U8") return load_le<uint8_t>(p);
    if (t == "U16") return load_le<uint16_t>(p);
    if (t == "U32") return load_le<uint32_t>(p);
    if (t == "U64") {
        const uint64_t v = load_le<uint64_t>(p);
        if (v > uint64_t(INT64_MAX)) throw Error("tensor \"" + e.name + "\": value over INT64_MAX");
        return static_cast<int64_t>(v);
    }
    throw Error("tensor \"" + e.name + "\" is " + t + ": expected an integer dtype (I64)");
}

std::string shape_string(const std::vector<int64_t> &shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

void append_value(std::string &out, DType t, double v) {
    char element[8];
    detail::store_element(element, t, v);
    out.append(element, static_cast<size_t>(dtype_size(t)));
}

// The per-channel tensors of a module's state_dict, in PyTorch's order: (key, StateDict member).
using PerChannel = std::vector<double> StateDict::*;
std::vector<std::pair<const char *, PerChannel>> per_channel_entries(const BatchNorm2d &m) {
    std::vector<std::pair<const char *, PerChannel>> entries;
    if (m.affine()) entries = {{"weight", &StateDict::weight}, {"bias", &StateDict::bias}};
    if (m.track_running_stats())
        entries.insert(entries.end(), {{"running_mean", &StateDict::running_mean},
                                       {"running_var", &StateDict::running_var}});
    return entries;
}

// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the
// directory (so the rename itself survives a crash).
void write_atomically(const std::string &path, const std::string &bytes) {
    std::string tmp = path + ".tmp-XXXXXX";
    const int fd = mkstemp(tmp.data());
    if (fd < 0)
        throw Error(std::string("cannot create a temporary file beside it: ") +
                    std::strerror(errno));
    auto fail = [&](const char *what) {
        const int err = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        throw Error(std::string(what) + ": " + std::strerror(err));
    };
    if (fchmod(fd, 0644) != 0) fail("chmod");
    for (size_t done = 0; done < bytes.size();) {
        const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            fail("write");
        }
        done += static_cast<size_t>(w);
    }
    if (fsync(fd) != 0) fail("fsync");
    if (::close(fd) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        throw Error(std::string("close: ") + std::strerror(err));
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        throw Error(std::string("rename: ") + std::strerror(err));
    }
    const size_t slash = path.find_last_of('/');
    const std::string dir =
        slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (dfd >=
        0) {  // best effort: the data is already durable, only the rename's journal entry is not
        fsync(dfd);
        ::close(dfd);
    }
}

}  // namespace

std::vector<SafetensorsEntry> read_safetensors_header(const std::string &path) {
    try {
        std::ifstream f = open_for_reading(path);
        return parse_header(f).entries;
    } catch (const Error &e) {
        throw Error("read_safetensors_header(" + path + "): " + e.what());
    }
}

void save_safetensors(const BatchNorm2d &module, const std::string &path,
                      const std::string &prefix) {
    try {
        const StateDict d = module.state_dict();
        const DType t = module.dtype();
        std::string header = "{\"__metadata__\":{\"format\":\"pt\"}", data;
        auto add = [&](const std::string &key, const char *dtype, const std::string &shape,
                       const std::string &bytes) {
            header += "," + json_quote(prefix + key) + ":{\"dtype\":\"" + dtype +
                      "\",\"shape\":" + shape + ",\"data_offsets\":[" +
                      std::to_string(data.size()) + "," +
                      std::to_string(data.size() + bytes.size()) + "]}";
            data += bytes;
        };
        auto vector = [&](const char *key, const std::vector<double> &values) {
            std::string bytes;
            for (double v : values) append_value(bytes, t, v);
            add(key, safetensors_dtype(t), "[" + std::to_string(values.size()) + "]", bytes);
        };
        for (const auto &[key, field] : per_channel_entries(module)) vector(key, d.*field);
        if (module.track_running_stats()) {
            std::string count(sizeof(int64_t), '\0');
            std::memcpy(count.data(), &d.num_batches_tracked, sizeof(int64_t));
            add("num_batches_tracked", "I64", "[]", count);
        }
        header += "}";
        // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
        header.append((8 - header.size() % 8) % 8, ' ');
        std::string file(8, '\0');
        const uint64_t n = header.size();
        for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((n >> (8 * i)) & 0xff);
        file += header;
        file += data;
        write_atomically(path, file);
    } catch (const Error &e) {
        throw Error("save_safetensors(" + path + "): " + e.what());
    }
}

void load_safetensors(BatchNorm2d &module, const std::string &path, const std::string &prefix,
                      bool strict) {
    try {
        std::ifstream f = open_for_reading(path);
        const Header h = parse_header(f);
        std::map<std::string, const SafetensorsEntry *> ours;  // key without the prefix
        for (const SafetensorsEntry &e : h.entries)
            if (e.name.compare(0, prefix.size(), prefix) == 0)
                ours[e.name.substr(prefix.size())] = &e;

        std::vector<std::string> expected;
        for (const auto &entry : per_channel_entries(module)) expected.push_back(entry.first);
        if (module.track_running_stats()) expected.push_back("num_batches_tracked");
        if (strict) {
            std::string unexpected;
            for (const auto &[key, e] : ours)
                if (std::find(expected.begin(), expected.end(), key) == expected.end())
                    unexpected += (unexpected.empty() ? "" : ", ") + ('"' + e->name + '"');
            if (!unexpected.empty())
                throw Error("unexpected key(s) " + unexpected + " for " + module.to_string() +
                            " (strict; pass strict = false to ignore them)");
        }

        const int64_t C = module.num_features();
        StateDict d = module.state_dict();
        auto vector = [&](const std::string &key, std::vector<double> &out) {
            const auto it = ours.find(key);
            if (it == ours.end()) throw Error("missing key \"" + prefix + key + "\"");
            const SafetensorsEntry &e = *it->second;
            if (e.shape != std::vector<int64_t>{C})
                throw Error("tensor \"" + e.name + "\" has shape " + shape_string(e.shape) +
                            ", the module has " + shape_string({C}));
            out = decode_floats(read_bytes(f, h, e), e);
        };
        for (const auto &[key, field] : per_channel_entries(module)) vector(key, d.*field);
        if (module.track_running_stats()) {
            const auto it = ours.find("num_batches_tracked");
            d.num_batches_tracked = 0;
            if (it != ours.end()) {
                const SafetensorsEntry &e = *it->second;
                // A 0-dim tensor, or [1] as PyTorch also accepts for old checkpoints.
                if (!e.shape.empty() && e.shape != std::vector<int64_t>{1})
                    throw Error("tensor \"" + e.name + "\" has shape " + shape_string(e.shape) +
                                ", expected [] (a scalar)");
                d.num_batches_tracked = decode_count(read_bytes(f, h, e), e);
                if (d.num_batches_tracked < 0)
                    throw Error("tensor \"" + e.name +
                                "\" is negative: " + std::to_string(d.num_batches_tracked));
            }
        }
        module.load_state_dict(d);
    } catch (const Error &e) {
        throw Error("load_safetensors(" + path +
                    (prefix.empty() ? "" : ", prefix \"" + prefix + "\"") + "): " + e.what());
    }
}

}  // namespace bn2d
