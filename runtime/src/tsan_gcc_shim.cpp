// ThreadSanitizer builds only (BN2D_HALIDE_FEATURES=tsan): Halide's LLVM instruments its
// memcpy and memset calls as __tsan_memcpy / __tsan_memset, which gcc 12's libtsan does not
// export. Forwarding them to libc keeps the accesses checked: libtsan intercepts memcpy and
// memset themselves.
#include <cstddef>
#include <cstring>

extern "C" void *__tsan_memcpy(void *dst, const void *src, size_t n) {
    return std::memcpy(dst, src, n);
}
extern "C" void *__tsan_memset(void *dst, int c, size_t n) { return std::memset(dst, c, n); }
extern "C" void *__tsan_memmove(void *dst, const void *src, size_t n) {
    return std::memmove(dst, src, n);
}
