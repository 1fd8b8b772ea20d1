// dfc-decode: the confined process that decodes clients' images for
// dfc-server (serving/decoder_pool.h). Torch-free: it links the image codec
// and the sandbox, nothing else. Not meant to be run by hand.
#include "serving/decoder_pool.h"

int main(int argc, char** argv) { return dfc::DecodeImagesMain(argc, argv); }
