/* ggml's own quantizers as a command, for tests/reference/test_quantize_ref.py.
 *
 *   ggml_quant_oracle TYPE IN.f32 OUT.bin [N_PER_ROW IMATRIX.f32]
 *
 * Quantizes the float32 values of IN.f32 (one row; a whole number of TYPE's blocks) with
 * ggml_quantize_chunk() and no importance matrix -- the path llama-quantize takes without
 * --imatrix, which calls ggml's quantize_row_*_ref -- and writes the blocks to OUT.bin.
 * With N_PER_ROW and IMATRIX.f32 (N_PER_ROW float32 importances, one per column), IN.f32
 * is a whole number of rows of N_PER_ROW values, quantized in one ggml_quantize_chunk()
 * call with that imatrix -- the llama-quantize --imatrix path (quantize_row_*_impl), for
 * tests/reference/test_quantize_imatrix.py.
 * Q8_K, an activation-only type that ggml_quantize_chunk() does not take, goes through
 * quantize_row_q8_K_ref() directly, into a zeroed buffer (ggml leaves the bsums of an
 * all-zero block unwritten). TYPE is ggml's name, any case: q4_K, Q4_K, bf16.
 *
 * Linked against ggml.c and ggml-quants.c from the pinned sdist, compiled the way ggml's
 * CMake compiles its ggml-base library (see ggml_quant_oracle.py); the backend functions
 * ggml.c refers to are never reached here and are stubbed below.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ggml.h"
#include "ggml-quants.h"

/* ggml.c references these from ggml-backend; quantizing never calls them. */
size_t ggml_backend_buffer_get_usage(void* buffer) { (void)buffer; abort(); }
void ggml_backend_tensor_memset(void* t, unsigned char v, size_t o, size_t n) { (void)t; (void)v; (void)o; (void)n; abort(); }
void ggml_backend_tensor_set(void* t, const void* d, size_t o, size_t n) { (void)t; (void)d; (void)o; (void)n; abort(); }

static int find_type(const char* name) {
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const char* n = ggml_type_name((enum ggml_type)t);
        if (n != NULL && strcasecmp(n, name) == 0) return t;
    }
    return -1;
}

/* The whole file as float32 values; NULL (with a message) when unreadable. */
static float* read_floats(const char* path, int64_t* count) {
    FILE* in = fopen(path, "rb");
    if (in == NULL) {
        fprintf(stderr, "error: %s: cannot read\n", path);
        return NULL;
    }
    fseek(in, 0, SEEK_END);
    const long bytes = ftell(in);
    fseek(in, 0, SEEK_SET);
    if (bytes <= 0 || bytes % (long)sizeof(float) != 0) {
        fprintf(stderr, "error: %s: %ld bytes is not a positive whole number of float32 values\n", path, bytes);
        fclose(in);
        return NULL;
    }
    float* x = malloc((size_t)bytes);
    if (fread(x, 1, (size_t)bytes, in) != (size_t)bytes) {
        fprintf(stderr, "error: %s: short read\n", path);
        fclose(in);
        free(x);
        return NULL;
    }
    fclose(in);
    *count = bytes / (long)sizeof(float);
    return x;
}

int main(int argc, char** argv) {
    if (argc != 4 && argc != 6) {
        fprintf(stderr, "usage: %s TYPE IN.f32 OUT.bin [N_PER_ROW IMATRIX.f32]\n", argv[0]);
        return 2;
    }
    const int type = find_type(argv[1]);
    if (type < 0) {
        fprintf(stderr, "error: unknown ggml type '%s'\n", argv[1]);
        return 2;
    }
    int64_t n = 0;
    float* x = read_floats(argv[2], &n);
    if (x == NULL) return 1;
    const int64_t block = ggml_blck_size((enum ggml_type)type);
    if (n % block != 0) {
        fprintf(stderr, "error: %s: %lld values is not a whole number of %s blocks\n", argv[2], (long long)n, argv[1]);
        return 1;
    }
    int64_t n_per_row = n;
    float* imatrix = NULL;
    if (argc == 6) {
        n_per_row = strtoll(argv[4], NULL, 10);
        int64_t n_imatrix = 0;
        imatrix = read_floats(argv[5], &n_imatrix);
        if (imatrix == NULL) return 1;
        if (n_per_row <= 0 || n_per_row % block != 0 || n % n_per_row != 0 || n_imatrix != n_per_row) {
            fprintf(stderr, "error: N_PER_ROW %s: needs a multiple of %s's block that divides %lld values and "
                    "equals the %lld importances of %s\n", argv[4], argv[1], (long long)n, (long long)n_imatrix,
                    argv[5]);
            return 1;
        }
    }
    const int64_t nrows = n / n_per_row;
    const size_t out_bytes = (size_t)nrows * ggml_row_size((enum ggml_type)type, n_per_row);
    void* y = calloc(1, out_bytes);
    if (type == GGML_TYPE_Q8_K) {
        quantize_row_q8_K_ref(x, (block_q8_K*)y, n);
    } else {
        const size_t written = ggml_quantize_chunk((enum ggml_type)type, x, y, 0, nrows, n_per_row, imatrix);
        if (written != out_bytes) {
            fprintf(stderr, "error: ggml_quantize_chunk wrote %zu bytes, expected %zu\n", written, out_bytes);
            return 1;
        }
    }
    FILE* out = fopen(argv[3], "wb");
    if (out == NULL || fwrite(y, 1, out_bytes, out) != out_bytes || fclose(out) != 0) {
        fprintf(stderr, "error: %s: cannot write\n", argv[3]);
        return 1;
    }
    free(x);
    free(imatrix);
    free(y);
    return 0;
}
