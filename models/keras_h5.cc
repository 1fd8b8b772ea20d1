#include "models/keras_h5.h"

#include <hdf5.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <regex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/atomic_file.h"
#include "common/status_macros.h"
#include "models/detector.h"

namespace dfc {
namespace {

// Closes an HDF5 handle with the right function when it leaves scope.
class H5Handle {
 public:
  H5Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~H5Handle() {
    if (id_ >= 0) close_(id_);
  }
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// Silences the HDF5 library's own stderr dump; we return our own errors.
struct QuietHdf5 {
  QuietHdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
};

absl::StatusOr<std::vector<std::string>> ReadStringArrayAttr(hid_t obj, const char* attr_name,
                                                             const std::string& where) {
  if (H5Aexists(obj, attr_name) <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, " has no '", attr_name, "' attribute"));
  }
  H5Handle attr(H5Aopen(obj, attr_name, H5P_DEFAULT), H5Aclose);
  H5Handle type(H5Aget_type(attr.get()), H5Tclose);
  H5Handle space(H5Aget_space(attr.get()), H5Sclose);
  if (!attr.ok() || !type.ok() || !space.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": cannot read attribute '", attr_name, "'"));
  }
  // Keras writes an empty float array for layers without weights.
  if (H5Sget_simple_extent_type(space.get()) == H5S_NULL || H5Sget_simple_extent_npoints(space.get()) == 0) {
    return std::vector<std::string>();
  }
  if (H5Tget_class(type.get()) != H5T_STRING) {
    return absl::InvalidArgumentError(absl::StrCat(where, " attribute '", attr_name, "' is not a string array"));
  }
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  if (n < 0 || n > 1'000'000) return absl::InvalidArgumentError(absl::StrCat(where, ": bad '", attr_name, "' size"));
  std::vector<std::string> out;
  if (H5Tis_variable_str(type.get()) > 0) {
    std::vector<char*> ptrs(static_cast<size_t>(n), nullptr);
    H5Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mem.get(), H5T_VARIABLE);
    if (n > 0 && H5Aread(attr.get(), mem.get(), ptrs.data()) < 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": cannot read '", attr_name, "'"));
    }
    for (char* p : ptrs) {
      out.emplace_back(p ? p : "");
      H5free_memory(p);
    }
  } else {
    const size_t len = H5Tget_size(type.get());
    std::vector<char> buf(len * static_cast<size_t>(n) + 1, '\0');
    if (n > 0 && H5Aread(attr.get(), type.get(), buf.data()) < 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": cannot read '", attr_name, "'"));
    }
    for (hssize_t i = 0; i < n; ++i) {
      const char* s = buf.data() + i * len;
      out.emplace_back(s, strnlen(s, len));
    }
  }
  return out;
}

// "conv2d_1/kernel:0" -> "kernel"; "conv1/7x7_s2/bn/gamma:0" -> "gamma".
std::string ShortWeightName(const std::string& full) {
  std::string s = full;
  if (auto slash = s.rfind('/'); slash != std::string::npos) s = s.substr(slash + 1);
  if (auto colon = s.find(':'); colon != std::string::npos) s = s.substr(0, colon);
  return s;
}

std::string ShapeString(const std::vector<int64_t>& shape) { return absl::StrCat("[", absl::StrJoin(shape, ","), "]"); }

std::vector<int64_t> KerasShape(const KerasWeight& w) {
  const auto s = w.target.sizes();
  switch (w.layout) {
    case KerasLayout::kConvKernel:
      return {s[2], s[3], s[1], s[0]};
    case KerasLayout::kDenseKernel:
      return {s[1], s[0]};
    case KerasLayout::kVector:
      break;
  }
  return std::vector<int64_t>(s.begin(), s.end());
}

// Keras data -> tensor in the target's layout.
torch::Tensor ToTarget(const H5Array& a, const KerasWeight& w) {
  torch::Tensor t = torch::from_blob(const_cast<float*>(a.data.data()), a.shape, torch::kFloat32);
  switch (w.layout) {
    case KerasLayout::kConvKernel:
      return t.permute({3, 2, 0, 1});
    case KerasLayout::kDenseKernel:
      return t.t();
    case KerasLayout::kVector:
      break;
  }
  return t;
}

// Keras names layers it numbers itself <kind>_<n>, counting across every model
// built in the session; within one model the numbers keep creation order.
// Renumbers each kind 1..k by that order so the model's names match.
std::map<std::string, std::string> NormalizeAutoNames(const std::vector<H5Layer>& layers) {
  static const std::regex kAuto("^(conv2d|batch_normalization|dense)_([0-9]+)$");
  std::map<std::string, std::vector<std::pair<long, std::string>>> by_kind;
  std::map<std::string, std::string> renamed;
  for (const H5Layer& l : layers) {
    std::smatch m;
    if (std::regex_match(l.name, m, kAuto)) {
      by_kind[m[1]].emplace_back(std::stol(m[2]), l.name);
    } else {
      renamed[l.name] = l.name;
    }
  }
  for (auto& [kind, items] : by_kind) {
    std::sort(items.begin(), items.end());
    for (size_t i = 0; i < items.size(); ++i) renamed[items[i].second] = absl::StrCat(kind, "_", i + 1);
  }
  return renamed;
}

}  // namespace

bool LooksLikeHdf5(const std::string& path) {
  return FileStartsWith(path, std::string_view("\x89HDF\r\n\x1a\n", 8));
}

absl::StatusOr<std::vector<H5Layer>> ReadKerasH5(const std::string& path) {
  static QuietHdf5 quiet;
  if (auto probe = OpenToRead(path); !probe.ok()) {  // a FIFO is refused, not waited on
    return absl::Status(probe.status().code(), absl::StrCat("weights file: ", probe.status().message()));
  }
  if (!LooksLikeHdf5(path)) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not an HDF5 file"));
  }
  H5Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file.ok()) return absl::InvalidArgumentError(absl::StrCat("cannot open HDF5 file '", path, "'"));
  hid_t root = file.get();
  std::unique_ptr<H5Handle> model_weights;
  if (H5Aexists(root, "layer_names") <= 0 && H5Lexists(root, "model_weights", H5P_DEFAULT) > 0) {
    model_weights = std::make_unique<H5Handle>(H5Gopen2(root, "model_weights", H5P_DEFAULT), H5Gclose);
    root = model_weights->get();
  }
  if (H5Aexists(root, "layer_names") <= 0) {
    // Keras 3's .weights.h5 keeps each layer's variables at
    // layers/NAME/vars/0, 1, ... with no names or order of its own.
    if (H5Lexists(root, "layers", H5P_DEFAULT) > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", path, "' is a Keras 3 .weights.h5 file (layers/NAME/vars); DFC reads Keras weights in "
                       "the HDF5 layout, which Keras 3 writes with model.save('model.h5')"));
    }
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is an HDF5 file but not Keras weights: it has no ",
                                                   "'layer_names' attribute at its root or in model_weights/"));
  }
  DFC_ASSIGN_OR_RETURN(std::vector<std::string> names,
                       ReadStringArrayAttr(root, "layer_names", absl::StrCat("'", path, "'")));
  std::vector<H5Layer> layers;
  for (const std::string& name : names) {
    H5Layer layer;
    layer.name = name;
    H5Handle group(H5Gopen2(root, name.c_str(), H5P_DEFAULT), H5Gclose);
    if (!group.ok()) return absl::InvalidArgumentError(absl::StrCat("'", path, "': layer group '", name, "' is missing"));
    DFC_ASSIGN_OR_RETURN(std::vector<std::string> weight_names,
                         ReadStringArrayAttr(group.get(), "weight_names", absl::StrCat("layer '", name, "'")));
    for (const std::string& wn : weight_names) {
      H5Handle ds(H5Dopen2(group.get(), wn.c_str(), H5P_DEFAULT), H5Dclose);
      if (!ds.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("layer '", name, "': weight '", wn, "' is listed but missing"));
      }
      H5Handle space(H5Dget_space(ds.get()), H5Sclose);
      const int rank = H5Sget_simple_extent_ndims(space.get());
      if (rank < 0 || rank > 8) return absl::InvalidArgumentError(absl::StrCat("layer '", name, "': bad rank"));
      std::vector<hsize_t> dims(static_cast<size_t>(rank));
      H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
      H5Array arr;
      arr.name = ShortWeightName(wn);
      size_t count = 1;
      for (hsize_t d : dims) {
        arr.shape.push_back(static_cast<int64_t>(d));
        count *= d;
      }
      if (count > (size_t{1} << 30)) return absl::InvalidArgumentError(absl::StrCat("layer '", name, "': weight too large"));
      arr.data.resize(count);
      if (count > 0 && H5Dread(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, arr.data.data()) < 0) {
        return absl::InvalidArgumentError(absl::StrCat("layer '", name, "': cannot read weight '", wn, "' as float"));
      }
      layer.weights.push_back(std::move(arr));
    }
    layers.push_back(std::move(layer));
  }
  return layers;
}

namespace {

absl::Status WriteFixedStringAttr(hid_t obj, const char* name, const std::vector<std::string>& values) {
  size_t len = 1;
  for (const auto& v : values) len = std::max(len, v.size());
  std::vector<char> buf(len * values.size(), '\0');
  for (size_t i = 0; i < values.size(); ++i) std::memcpy(buf.data() + i * len, values[i].data(), values[i].size());
  H5Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), len);
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  hsize_t dims[1] = {values.size()};
  H5Handle space(values.empty() ? H5Screate(H5S_NULL) : H5Screate_simple(1, dims, nullptr), H5Sclose);
  H5Handle attr(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.ok() || (!values.empty() && H5Awrite(attr.get(), type.get(), buf.data()) < 0)) {
    return absl::InternalError(absl::StrCat("cannot write attribute ", name));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteKerasH5(const std::string& path, const std::vector<H5Layer>& layers) {
  static QuietHdf5 quiet;
  H5Handle file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
  if (!file.ok()) return absl::InternalError(absl::StrCat("cannot create HDF5 file '", path, "'"));
  std::vector<std::string> names;
  for (const H5Layer& l : layers) names.push_back(l.name);
  DFC_RETURN_IF_ERROR(WriteFixedStringAttr(file.get(), "layer_names", names));
  H5Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  for (const H5Layer& l : layers) {
    H5Handle group(H5Gcreate2(file.get(), l.name.c_str(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
    if (!group.ok()) return absl::InternalError(absl::StrCat("cannot create group ", l.name));
    std::vector<std::string> weight_names;
    for (const H5Array& a : l.weights) weight_names.push_back(absl::StrCat(l.name, "/", a.name, ":0"));
    DFC_RETURN_IF_ERROR(WriteFixedStringAttr(group.get(), "weight_names", weight_names));
    for (size_t i = 0; i < l.weights.size(); ++i) {
      const H5Array& a = l.weights[i];
      std::vector<hsize_t> dims(a.shape.begin(), a.shape.end());
      H5Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
      H5Handle ds(H5Dcreate2(group.get(), weight_names[i].c_str(), H5T_IEEE_F32LE, space.get(), lcpl.get(),
                             H5P_DEFAULT, H5P_DEFAULT),
                  H5Dclose);
      if (!ds.ok() || H5Dwrite(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, a.data.data()) < 0) {
        return absl::InternalError(absl::StrCat("cannot write ", weight_names[i]));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ImportKerasWeights(DetectorImpl& model, const std::string& path) {
  DFC_ASSIGN_OR_RETURN(std::vector<H5Layer> file_layers, ReadKerasH5(path));
  const std::map<std::string, std::string> normalized = NormalizeAutoNames(file_layers);
  std::map<std::string, const H5Layer*> by_name;
  for (const H5Layer& l : file_layers) {
    if (!l.weights.empty()) by_name[normalized.at(l.name)] = &l;
  }
  std::vector<KerasLayer> targets = model.KerasLayers();
  std::vector<std::pair<const H5Array*, const KerasWeight*>> copies;
  std::map<std::string, bool> used;
  for (const KerasLayer& layer : targets) {
    auto it = by_name.find(layer.name);
    if (it == by_name.end()) {
      if (layer.optional) continue;
      return absl::InvalidArgumentError(absl::StrCat("weights file '", path, "' has no layer '", layer.name,
                                                     "' that model ", model.arch(), " needs"));
    }
    used[layer.name] = true;
    const H5Layer& fl = *it->second;
    if (fl.weights.size() != layer.weights.size()) {
      return absl::InvalidArgumentError(absl::StrCat("layer '", fl.name, "' has ", fl.weights.size(),
                                                     " weights in the file, model ", model.arch(), " expects ",
                                                     layer.weights.size()));
    }
    for (const KerasWeight& w : layer.weights) {
      auto fw = std::find_if(fl.weights.begin(), fl.weights.end(), [&](const H5Array& a) { return a.name == w.name; });
      if (fw == fl.weights.end()) {
        return absl::InvalidArgumentError(absl::StrCat("layer '", fl.name, "' has no '", w.name, "' weight in '", path, "'"));
      }
      const std::vector<int64_t> expected = KerasShape(w);
      if (fw->shape != expected) {
        return absl::InvalidArgumentError(absl::StrCat("layer '", fl.name, "' weight '", w.name, "': file shape ",
                                                       ShapeString(fw->shape), ", model ", model.arch(), " expects ",
                                                       ShapeString(expected)));
      }
      copies.emplace_back(&*fw, &w);
    }
  }
  for (const auto& [name, layer] : by_name) {
    if (!used.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat("weights file '", path, "' has layer '", layer->name,
                                                     "' that model ", model.arch(), " does not have"));
    }
  }
  torch::NoGradGuard no_grad;
  for (const auto& [arr, w] : copies) w->target.copy_(ToTarget(*arr, *w));
  return absl::OkStatus();
}

std::vector<H5Layer> ExportKerasLayers(DetectorImpl& model) {
  std::vector<H5Layer> out;
  for (const KerasLayer& layer : model.KerasLayers()) {
    H5Layer l;
    l.name = layer.name;
    for (const KerasWeight& w : layer.weights) {
      torch::Tensor t = w.target.detach();
      if (w.layout == KerasLayout::kConvKernel) t = t.permute({2, 3, 1, 0});
      if (w.layout == KerasLayout::kDenseKernel) t = t.t();
      t = t.contiguous().to(torch::kFloat32).cpu();
      H5Array a;
      a.name = w.name;
      a.shape = KerasShape(w);
      a.data.assign(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
      l.weights.push_back(std::move(a));
    }
    out.push_back(std::move(l));
  }
  return out;
}

}  // namespace dfc
