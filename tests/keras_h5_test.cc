#include "models/keras_h5.h"

#include <caffe2/serialize/inline_container.h>
#include <hdf5.h>

#include <fstream>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/test_util.h"
#include "models/checkpoint.h"
#include "models/inference.h"
#include "models/detector.h"

namespace dfc {
namespace {

std::string MesoWeights(const std::string& file) { return testing::SharedDir() + "/weights/mesonet/" + file; }

bool HaveShared() { return std::ifstream(MesoWeights("MesoInception_DF.h5")).good(); }

torch::Tensor Forward(DetectorImpl& m, const torch::Tensor& x) {
  torch::NoGradGuard g;
  m.eval();
  return m.forward(x);
}

H5Array Array(const std::string& name, std::vector<int64_t> shape, float start) {
  H5Array a;
  a.name = name;
  a.shape = shape;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  for (int64_t i = 0; i < n; ++i) a.data.push_back(start + 0.001f * static_cast<float>(i % 97));
  return a;
}

TEST(KerasH5Test, ExportImportRoundTripRenumberedLikeAKerasSession) {
  auto a = MakeDetector("mesoinception4");
  auto b = MakeDetector("mesoinception4");
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<H5Layer> layers = ExportKerasLayers(**a);
  // A file saved after other models were built: conv2d_17.., dense_3..
  for (H5Layer& l : layers) {
    const size_t us = l.name.rfind('_');
    l.name = absl::StrCat(l.name.substr(0, us), "_", std::stoi(l.name.substr(us + 1)) + 16);
  }
  layers.insert(layers.begin(), H5Layer{"input_3", {}});
  testing::TempDir dir;
  const std::string path = dir.Join("w.h5");
  ASSERT_TRUE(WriteKerasH5(path, layers).ok());
  ASSERT_TRUE(ImportKerasWeights(**b, path).ok());
  torch::Tensor x = torch::rand({2, 3, 256, 256}) * 255;
  EXPECT_TRUE(torch::equal(Forward(**a, x), Forward(**b, x)));
}

TEST(KerasH5Test, ConvKernelIsTransposedFromHwio) {
  auto m = MakeDetector("meso4");
  ASSERT_TRUE(m.ok());
  std::vector<H5Layer> layers = ExportKerasLayers(**m);
  // Put a distinct value at Keras kernel[kh=0][kw=2][in=1][out=5] of conv2d_1 (3x3x3x8).
  H5Array& k = layers[0].weights[0];
  ASSERT_EQ(k.shape, (std::vector<int64_t>{3, 3, 3, 8}));
  std::fill(k.data.begin(), k.data.end(), 0.0f);
  k.data[((0 * 3 + 2) * 3 + 1) * 8 + 5] = 7.0f;
  testing::TempDir dir;
  ASSERT_TRUE(WriteKerasH5(dir.Join("w.h5"), layers).ok());
  ASSERT_TRUE(ImportKerasWeights(**m, dir.Join("w.h5")).ok());
  torch::Tensor w = (*m)->KerasLayers()[0].weights[0].target;  // OIHW
  EXPECT_FLOAT_EQ(w[5][1][0][2].item<float>(), 7.0f);
  EXPECT_FLOAT_EQ(w.abs().sum().item<float>(), 7.0f);
}

TEST(KerasH5Test, ErrorsNameLayerAndBothShapes) {
  auto m = MakeDetector("mesoinception4");
  ASSERT_TRUE(m.ok());
  testing::TempDir dir;
  std::vector<H5Layer> layers = ExportKerasLayers(**m);
  // Wrong shape in conv2d_3 (the 3x3 conv of branch 2: [3,3,4,4]).
  std::vector<H5Layer> bad_shape = layers;
  ASSERT_EQ(bad_shape[2].name, "conv2d_3");
  bad_shape[2].weights[0] = Array("kernel", {3, 3, 3, 4}, 0);
  ASSERT_TRUE(WriteKerasH5(dir.Join("shape.h5"), bad_shape).ok());
  torch::Tensor before = (*m)->KerasLayers()[0].weights[0].target.clone();
  auto st = ImportKerasWeights(**m, dir.Join("shape.h5"));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("conv2d_3"), std::string::npos) << st;
  EXPECT_NE(st.message().find("[3,3,3,4]"), std::string::npos) << st;
  EXPECT_NE(st.message().find("[3,3,4,4]"), std::string::npos) << st;
  // Nothing was copied: the check runs before any weight is written.
  EXPECT_TRUE(torch::equal(before, (*m)->KerasLayers()[0].weights[0].target));

  std::vector<H5Layer> missing = layers;
  missing.erase(missing.begin() + 7);  // batch_normalization_1
  ASSERT_TRUE(WriteKerasH5(dir.Join("missing.h5"), missing).ok());
  st = ImportKerasWeights(**m, dir.Join("missing.h5"));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("batch_normalization"), std::string::npos) << st;

  std::vector<H5Layer> no_bias = layers;
  no_bias[0].weights.pop_back();
  ASSERT_TRUE(WriteKerasH5(dir.Join("nobias.h5"), no_bias).ok());
  st = ImportKerasWeights(**m, dir.Join("nobias.h5"));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("conv2d_1"), std::string::npos) << st;

  st = ImportKerasWeights(**m, dir.Join("absent.h5"));
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  testing::WriteFileOrDie(dir.Join("text.h5"), "not hdf5 at all");
  st = ImportKerasWeights(**m, dir.Join("text.h5"));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("not an HDF5 file"), std::string::npos);
}

// The keras-vggface rcmalli_vggface_tf_notop_resnet50.h5 layout, written from
// an independent description of RESNET50's layer names, for a small width.
std::vector<H5Layer> VggFaceNotopLayout(int64_t width, const std::vector<int>& blocks) {
  std::vector<H5Layer> out;
  auto conv = [&](const std::string& name, int64_t k, int64_t in, int64_t o) {
    out.push_back({name, {Array("kernel", {k, k, in, o}, 0.01f * static_cast<float>(out.size() % 7))}});
  };
  auto bn = [&](const std::string& name, int64_t c) {
    out.push_back({name,
                   {Array("gamma", {c}, 1.0f), Array("beta", {c}, 0.1f), Array("moving_mean", {c}, 0.2f),
                    Array("moving_variance", {c}, 1.5f)}});
  };
  out.push_back({"input_1", {}});
  conv("conv1/7x7_s2", 7, 3, width);
  bn("conv1/7x7_s2/bn", width);
  out.push_back({"activation_1", {}});
  out.push_back({"max_pooling2d_1", {}});
  int64_t in = width;
  for (int s = 0; s < 4; ++s) {
    const int64_t f1 = width << s, f3 = f1 * 4;
    for (int b = 1; b <= blocks[s]; ++b) {
      const std::string p = absl::StrCat("conv", s + 2, "_", b);
      conv(p + "_1x1_reduce", 1, in, f1);
      bn(p + "_1x1_reduce/bn", f1);
      conv(p + "_3x3", 3, f1, f1);
      bn(p + "_3x3/bn", f1);
      conv(p + "_1x1_increase", 1, f1, f3);
      bn(p + "_1x1_increase/bn", f3);
      if (b == 1) {
        conv(p + "_1x1_proj", 1, in, f3);
        bn(p + "_1x1_proj/bn", f3);
      }
      in = f3;
    }
  }
  out.push_back({"avg_pool", {}});
  return out;
}

TEST(KerasH5Test, LoadsVggFaceNotopLayout) {
  DetectorOptions small;
  small.resnet_width = 4;
  small.resnet_blocks = {2, 1, 2, 1};
  auto m = MakeDetector("resnet50-vggface", small);
  ASSERT_TRUE(m.ok());
  testing::TempDir dir;
  auto layout = VggFaceNotopLayout(4, small.resnet_blocks);
  ASSERT_TRUE(WriteKerasH5(dir.Join("vggface.h5"), layout).ok());
  auto st = ImportKerasWeights(**m, dir.Join("vggface.h5"));
  ASSERT_TRUE(st.ok()) << st;
  // Every backbone weight came from the file; the head (absent in a no-top file) kept its init.
  auto layers = (*m)->KerasLayers();
  auto find = [&](const std::string& name) -> const KerasLayer& {
    for (const auto& l : layers)
      if (l.name == name) return l;
    throw std::runtime_error(name);
  };
  EXPECT_FLOAT_EQ(find("conv3_1_1x1_proj/bn").weights[3].target[0].item<float>(), 1.5f);  // moving_variance
  EXPECT_FLOAT_EQ(find("conv2_2_3x3/bn").weights[1].target[2].item<float>(), 0.1f + 0.002f);
  // A file for another width fails naming the first mismatched layer and shapes.
  auto wide = VggFaceNotopLayout(8, small.resnet_blocks);
  ASSERT_TRUE(WriteKerasH5(dir.Join("wide.h5"), wide).ok());
  st = ImportKerasWeights(**m, dir.Join("wide.h5"));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("conv1/7x7_s2"), std::string::npos) << st;
  EXPECT_NE(st.message().find("[7,7,3,8]"), std::string::npos) << st;
  EXPECT_NE(st.message().find("[7,7,3,4]"), std::string::npos) << st;
  // The full-size model's layer names are exactly the keras-vggface ones.
  auto full = MakeDetector("resnet50-vggface");
  ASSERT_TRUE(full.ok());
  std::vector<std::string> expected, got;
  for (const auto& l : VggFaceNotopLayout(64, {3, 4, 6, 3}))
    if (!l.weights.empty()) expected.push_back(l.name);
  for (const auto& l : (*full)->KerasLayers())
    if (!l.optional) got.push_back(l.name);
  EXPECT_EQ(got, expected);
}

TEST(KerasH5Test, LoadsTheMesoNetAuthorsFiles) {
  if (!HaveShared()) GTEST_SKIP() << "../shared weights not present";
  for (const auto& [file, arch] : std::vector<std::pair<std::string, std::string>>{
           {"MesoInception_DF.h5", "mesoinception4"},
           {"MesoInception_F2F.h5", "mesoinception4"},
           {"Meso4_DF.h5", "meso4"},
           {"Meso4_F2F.h5", "meso4"}}) {
    auto m = MakeDetector(arch);
    ASSERT_TRUE(m.ok());
    EXPECT_TRUE(ImportKerasWeights(**m, MesoWeights(file)).ok()) << file;
  }
  auto wrong = MakeDetector("mesoinception4");
  auto st = ImportKerasWeights(**wrong, MesoWeights("Meso4_DF.h5"));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("layer"), std::string::npos) << st;
}

// A zip archive of stored (uncompressed) entries, as Python's zipfile
// writes one with ZIP_STORED (a Keras 3 .keras file is such an archive).
std::string StoredZip(const std::vector<std::pair<std::string, std::string>>& entries) {
  auto crc32 = [](const std::string& d) {
    uint32_t c = 0xFFFFFFFFu;
    for (unsigned char b : d) {
      c ^= b;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
  };
  auto put = [](std::string& out, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  };
  std::string out, central;
  for (const auto& [name, data] : entries) {
    const uint32_t crc = crc32(data);
    const size_t offset = out.size();
    put(out, 0x04034b50, 4);
    put(out, 20, 2), put(out, 0, 2), put(out, 0, 2), put(out, 0, 2), put(out, 0, 2);
    put(out, crc, 4), put(out, data.size(), 4), put(out, data.size(), 4);
    put(out, name.size(), 2), put(out, 0, 2);
    out += name + data;
    put(central, 0x02014b50, 4);
    put(central, 20, 2), put(central, 20, 2), put(central, 0, 2), put(central, 0, 2), put(central, 0, 2);
    put(central, 0, 2), put(central, crc, 4), put(central, data.size(), 4), put(central, data.size(), 4);
    put(central, name.size(), 2), put(central, 0, 2), put(central, 0, 2), put(central, 0, 2), put(central, 0, 2);
    put(central, 0, 4), put(central, offset, 4);
    central += name;
  }
  const size_t central_at = out.size();
  out += central;
  put(out, 0x06054b50, 4);
  put(out, 0, 2), put(out, 0, 2), put(out, entries.size(), 2), put(out, entries.size(), 2);
  put(out, central.size(), 4), put(out, central_at, 4), put(out, 0, 2);
  return out;
}

// An HDF5 file at `path`, filled by `fill`.
template <typename Fill>
void WriteHdf5(const std::string& path, Fill fill) {
  const hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(f, 0) << path;
  fill(f);
  H5Fclose(f);
}

void WriteFloatDataset(hid_t where, const char* name, hsize_t n) {
  const std::vector<float> zeros(n, 0.0f);
  const hid_t space = H5Screate_simple(1, &n, nullptr);
  const hid_t ds = H5Dcreate2(where, name, H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros.data());
  H5Dclose(ds);
  H5Sclose(space);
}

// --weights and --init are given the wrong file often: a PyTorch
// state_dict, a Keras 3 file, a copy that did not finish. Each is refused
// naming what it is, where LibTorch's reader said "PytorchStreamReader
// failed locating file constants.pkl" or "istream reader failed: getting
// the current position" and the HDF5 reader "no 'layer_names' attribute".
TEST(KerasH5Test, AWrongWeightsFileIsRefusedSayingWhatItIs) {
  testing::TempDir dir;
  auto model = MakeDetector("meso4");
  ASSERT_TRUE(model.ok());
  CheckpointMeta meta;
  meta.arch = "meso4";
  ASSERT_TRUE(SaveCheckpoint(dir.Join("good.ckpt"), **model, nullptr, meta).ok());
  ASSERT_TRUE(LoadDetector("meso4", dir.Join("good.ckpt")).ok());
  const std::string ckpt = testing::ReadFileOrDie(dir.Join("good.ckpt"));

  testing::WriteFileOrDie(dir.Join("empty.ckpt"), "");
  testing::WriteFileOrDie(dir.Join("cut.ckpt"), ckpt.substr(0, ckpt.size() / 2));
  testing::WriteFileOrDie(dir.Join("text.ckpt"), "junk\n");
  // torch.save(state_dict) since PyTorch 1.6: LibTorch's own zip writer,
  // with a pickle and no TorchScript constants.
  {
    std::string bytes;
    caffe2::serialize::PyTorchStreamWriter w([&](const void* b, size_t n) {
      bytes.append(static_cast<const char*>(b), n);
      return n;
    });
    const std::string pickle = "\x80\x02}q\x00.";
    w.writeRecord("data.pkl", pickle.data(), pickle.size());
    w.writeRecord("data/0", "\0\0\0\0", 4);
    w.writeRecord("version", "3\n", 2);
    w.writeEndOfFile();
    testing::WriteFileOrDie(dir.Join("state_dict.pt"), bytes);
  }
  // torch.save before 1.6: a pickle, its magic number first.
  testing::WriteFileOrDie(dir.Join("legacy.pt"), std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 15));
  // A LibTorch archive that is not a checkpoint (torch::save of a tensor).
  torch::save(torch::zeros({2}), dir.Join("tensor.pt"));
  testing::WriteFileOrDie(dir.Join("model.keras"),
                          StoredZip({{"metadata.json", R"({"keras_version": "3.3.3"})"},
                                     {"config.json", R"({"class_name": "Functional"})"},
                                     {"model.weights.h5", "\x89HDF\r\n\x1a\n"}}));
  WriteHdf5(dir.Join("model.weights.h5"), [](hid_t f) {
    // Keras 3: layers/NAME/vars/0, 1, ... and the model's own vars/.
    const hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    const hid_t vars = H5Gcreate2(f, "layers/conv2d/vars", lcpl, H5P_DEFAULT, H5P_DEFAULT);
    WriteFloatDataset(vars, "0", 8);
    H5Gclose(vars);
    H5Gclose(H5Gcreate2(f, "vars", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Pclose(lcpl);
  });
  WriteHdf5(dir.Join("other.h5"), [](hid_t f) { WriteFloatDataset(f, "x", 3); });

  for (const auto& [file, what] : std::vector<std::pair<std::string, std::string>>{
           {"empty.ckpt", "is not a DFC checkpoint: the file is empty"},
           {"cut.ckpt", "is not a DFC checkpoint: it is a zip archive cut short"},
           {"text.ckpt", "none of the formats DFC reads (a DFC checkpoint, Keras HDF5 weights or served weights): "
                         "it begins with bytes 6a756e6b0a"},
           {"state_dict.pt", "it is a Python torch.save file (a pickled object such as a state_dict)"},
           {"legacy.pt", "it is a Python pickle"},
           {"tensor.pt", "is not a DFC checkpoint: it is a LibTorch archive without DFC's metadata"},
           {"model.keras", "it is a Keras 3 .keras archive; DFC reads Keras weights in the HDF5 layout, which "
                           "Keras 3 writes with model.save('model.h5')"},
           {"model.weights.h5", "is a Keras 3 .weights.h5 file (layers/NAME/vars)"},
           {"other.h5", "is an HDF5 file but not Keras weights: it has no 'layer_names' attribute"}}) {
    SCOPED_TRACE(file);
    auto loaded = LoadDetector("meso4", dir.Join(file));
    ASSERT_FALSE(loaded.ok());
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument) << loaded.status();
    EXPECT_NE(loaded.status().message().find(absl::StrCat("'", dir.Join(file), "' ")), std::string::npos)
        << loaded.status();
    EXPECT_NE(loaded.status().message().find(what), std::string::npos) << loaded.status();
    // --init goes the same way.
    auto m = MakeDetector("meso4");
    const absl::Status init = LoadWeightsByContent(dir.Join(file), **m);
    EXPECT_EQ(init.message(), loaded.status().message());
  }
}

// The forward pass under autocast (dfc predict/dfc-server --precision bf16)
// answers like fp32 on the authors' weights and real images; fp32 stays the
// reference (the numbers scripts/gpu_check.sh holds the CUDA build to).
TEST(InferencePrecisionTest, Bf16AgreesWithFp32OnRealImagesAndFp16NeedsCuda) {
  if (!HaveShared()) GTEST_SKIP() << "../shared weights not present";
  auto model = LoadDetector("mesoinception4", MesoWeights("MesoInception_DF.h5"), {}, "cpu");
  ASSERT_TRUE(model.ok()) << model.status();
  const std::string samples = testing::SharedDir() + "/data/mesonet-samples/";
  const std::vector<std::pair<std::string, std::pair<double, double>>> expected = {
      {"df/df00204.jpg", {0.026218, -3.614732}}, {"df/df01254.jpg", {0.000952, -6.956028}},
      {"real/real00240.jpg", {1.0, 21.596182}}, {"real/real00772.jpg", {1.0, 45.603153}}};
  std::vector<std::string> images;
  for (const auto& e : expected) images.push_back(testing::ReadFileOrDie(samples + e.first));
  const auto fp32 = PredictEncoded(**model, images, {}, "fp32");
  const auto bf16 = PredictEncoded(**model, images, {}, "bf16");
  bool any_differs = false;
  for (size_t i = 0; i < images.size(); ++i) {
    ASSERT_TRUE(fp32[i].status.ok() && bf16[i].status.ok()) << expected[i].first;
    EXPECT_NEAR(fp32[i].p_real, expected[i].second.first, 1e-4) << expected[i].first;
    EXPECT_NEAR(fp32[i].logit, expected[i].second.second, 1e-4 * std::abs(expected[i].second.second));
    EXPECT_EQ(bf16[i].p_real > 0.5, fp32[i].p_real > 0.5) << expected[i].first;
    EXPECT_NEAR(bf16[i].p_real, fp32[i].p_real, 0.02) << expected[i].first;
    // bf16 keeps 8 mantissa bits: logits moved up to 9% here (-3.61 -> -3.95), P(real) by < 0.01.
    EXPECT_NEAR(bf16[i].logit, fp32[i].logit, 0.15 * std::abs(fp32[i].logit) + 0.1) << expected[i].first;
    any_differs |= bf16[i].logit != fp32[i].logit;
  }
  EXPECT_TRUE(any_differs) << "bf16 gave fp32's exact logits: autocast did not run";
  auto fp16 = CheckInferencePrecision("fp16", "cpu");
  EXPECT_FALSE(fp16.ok());
  EXPECT_NE(fp16.message().find("CUDA"), std::string::npos) << fp16;
  EXPECT_NE(CheckInferencePrecision("fp8", "").message().find("--precision"), std::string::npos);
  EXPECT_TRUE(CheckInferencePrecision("bf16", "cpu").ok());
}

}  // namespace
}  // namespace dfc
