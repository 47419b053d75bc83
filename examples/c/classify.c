/*
 * classify: run a capszoo MXNet export from C through MXNet's C predict API.
 *
 * Usage: classify SYMBOL_JSON PARAMS_FILE IMAGE.raw [more images...]
 *
 * SYMBOL_JSON and PARAMS_FILE are the files `capszoo export NAME --format mxnet`
 * writes (NAME-symbol.json, NAME-0000.params).  Each image is a raw 28x28
 * grayscale picture, 784 bytes of uint8 in row order, light ink on a dark
 * background as in MNIST.  For every image the program prints one line:
 *
 *     IMAGE: class K probabilities p0 p1 ... p9
 *
 * where the probabilities are the net's first output (the lengths of the ten
 * digit capsules; they do not sum to 1) and K is the largest one.  On a missing
 * or unreadable file, an image of the wrong size or an MXNet error it prints a
 * message to stderr and exits with status 1.
 */
#include <errno.h>
#include <stdbool.h> /* c_predict_api.h uses bool and uint32_t */
#include <stdint.h>  /* without including these headers itself */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mxnet/c_api.h> /* MXNotifyShutdown */
#include <mxnet/c_predict_api.h>

#define SIDE 28
#define IMAGE_BYTES (SIDE * SIDE)

/* Print an error message and exit with status 1. */
static void die(const char *what, const char *why) {
  fprintf(stderr, "classify: %s: %s\n", what, why);
  exit(1);
}

/* Exit with MXNet's own message when an MXPred* call returns non-zero. */
static void check(int status, const char *call) {
  if (status != 0) die(call, MXGetLastError());
}

/* Read a whole file into a new buffer with a NUL byte after its end (so a
 * JSON file can be passed as a string); its size goes to *size.  It reads in
 * growing chunks rather than asking for the size first, so that a folder or
 * another unreadable path fails with the system's reason. */
static char *read_file(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) die(path, strerror(errno));
  size_t cap = 1 << 16, len = 0;
  char *buf = NULL;
  for (;;) {
    char *bigger = realloc(buf, cap + 1);
    if (bigger == NULL) die(path, "out of memory");
    buf = bigger;
    len += fread(buf + len, 1, cap - len, f);
    if (len < cap) break;  /* end of file or an error */
    cap *= 2;
  }
  if (ferror(f)) die(path, strerror(errno));
  fclose(f);
  buf[len] = '\0';
  *size = len;
  return buf;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s SYMBOL_JSON PARAMS_FILE IMAGE.raw [more images...]\n", argv[0]);
    return 1;
  }
  const char *symbol_path = argv[1], *params_path = argv[2];
  int num_images = argc - 3;

  /* Read and check every image before the (slower) model load, so a bad
   * argument fails at once and no partial results are printed. */
  float *inputs = malloc(sizeof(float) * IMAGE_BYTES * (size_t)num_images);
  if (inputs == NULL) die("images", "out of memory");
  for (int i = 0; i < num_images; i++) {
    size_t size;
    unsigned char *pixels = (unsigned char *)read_file(argv[3 + i], &size);
    if (size != IMAGE_BYTES) {
      fprintf(stderr, "classify: %s: %zu bytes, expected %d (a raw %dx%d uint8 image)\n",
              argv[3 + i], size, IMAGE_BYTES, SIDE, SIDE);
      return 1;
    }
    /* The net takes float32 pixels in [0, 1]. */
    for (size_t p = 0; p < IMAGE_BYTES; p++) inputs[(size_t)i * IMAGE_BYTES + p] = pixels[p] / 255.0f;
    free(pixels);
  }

  size_t symbol_size, params_size;
  char *symbol_json = read_file(symbol_path, &symbol_size);
  char *params = read_file(params_path, &params_size);
  if (symbol_size == 0) die(symbol_path, "empty file");
  if (params_size == 0) die(params_path, "empty file");
  if (params_size > INT32_MAX) die(params_path, "too large for MXPredCreate (over 2 GiB)");

  /* One input "data" of shape (1, 1, 28, 28), on the CPU (device type 1, id 0).
   * The params file holds "arg:NAME" / "aux:NAME" arrays, as MXPredCreate expects. */
  const char *input_keys[1] = {"data"};
  const uint32_t shape_indptr[2] = {0, 4};
  const uint32_t shape_data[4] = {1, 1, SIDE, SIDE};
  PredictorHandle pred = NULL;
  check(MXPredCreate(symbol_json, params, (int)params_size, 1, 0, 1, input_keys, shape_indptr,
                     shape_data, &pred),
        "MXPredCreate");
  free(symbol_json);
  free(params);

  /* Output 0 is the class probabilities, shape (1, number of classes). */
  uint32_t *out_shape, out_ndim;
  check(MXPredGetOutputShape(pred, 0, &out_shape, &out_ndim), "MXPredGetOutputShape");
  uint32_t num_classes = 1;
  for (uint32_t d = 0; d < out_ndim; d++) num_classes *= out_shape[d];
  float *probs = malloc(sizeof(float) * num_classes);
  if (probs == NULL || num_classes == 0) die("output 0", "no class probabilities");

  for (int i = 0; i < num_images; i++) {
    check(MXPredSetInput(pred, "data", inputs + (size_t)i * IMAGE_BYTES, IMAGE_BYTES), "MXPredSetInput");
    check(MXPredForward(pred), "MXPredForward");
    check(MXPredGetOutput(pred, 0, probs, num_classes), "MXPredGetOutput");

    uint32_t best = 0;
    for (uint32_t c = 1; c < num_classes; c++)
      if (probs[c] > probs[best]) best = c;
    /* %.9g prints enough digits to read each float32 back unchanged. */
    printf("%s: class %u probabilities", argv[3 + i], (unsigned)best);
    for (uint32_t c = 0; c < num_classes; c++) printf(" %.9g", probs[c]);
    printf("\n");
  }

  check(MXPredFree(pred), "MXPredFree");
  free(probs);
  free(inputs);
  /* Stop MXNet's engine threads before the process exits, as its Python binding does at exit:
   * left to the static destructors, their teardown can race and abort the process
   * ("terminate called without an active exception") after all output is written. */
  check(MXNotifyShutdown(), "MXNotifyShutdown");
  return 0;
}
