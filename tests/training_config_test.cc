// The training configuration's enums: names users type, values the API
// carries, jobs stored before the enums, numbers no name belongs to.
#include <gtest/gtest.h>

#include <google/protobuf/unknown_field_set.h>

#include "common/training_config.h"

namespace dfc {
namespace {

TEST(TrainingConfigTest, NamesAndEnumsRoundTrip) {
  for (const std::string& name : KnownModels()) {
    auto m = ParseModel(name);
    ASSERT_TRUE(m.ok()) << name;
    EXPECT_EQ(ModelName(*m), name);
  }
  EXPECT_EQ(*ParseLoss("mse"), v1::MSE);
  EXPECT_EQ(*ParseLoss(""), v1::LOSS_UNSPECIFIED);
  EXPECT_EQ(*ParseLrSchedule("notebook"), v1::NOTEBOOK);
  EXPECT_EQ(*ParsePrecision("bf16"), v1::BF16);
  EXPECT_EQ(PrecisionName(v1::PRECISION_UNSPECIFIED), "");
  auto bad = ParseModel("vgg");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("config.model (--model)"), std::string::npos) << bad.status();
  EXPECT_NE(bad.status().message().find("resnet50-vggface"), std::string::npos) << bad.status();
  EXPECT_FALSE(ParseModel("").ok()) << "a model is required";
  EXPECT_FALSE(ParsePrecision("fp8").ok());
}

TEST(TrainingConfigTest, TheValidatorRefusesNumbersNoNameBelongsTo) {
  v1::TrainingConfig c;
  c.set_model(v1::MESO4);
  c.set_data("/shared/shards");
  c.set_epochs(1);
  c.set_batch_size(8);
  EXPECT_TRUE(ValidateTrainingConfig(c).ok()) << ValidateTrainingConfig(c);
  v1::TrainingConfig unknown_model = c;
  unknown_model.set_model(static_cast<v1::Model>(99));  // proto3 keeps it
  EXPECT_NE(ValidateTrainingConfig(unknown_model).message().find("config.model"), std::string::npos);
  v1::TrainingConfig no_model = c;
  no_model.clear_model();
  EXPECT_NE(ValidateTrainingConfig(no_model).message().find("config.model"), std::string::npos);
  v1::TrainingConfig precision = c;
  precision.set_precision(static_cast<v1::Precision>(7));
  EXPECT_NE(ValidateTrainingConfig(precision).message().find("config.precision"), std::string::npos);
  v1::TrainingConfig graphs = c;
  graphs.set_cuda_graphs(static_cast<v1::CudaGraphs>(9));
  EXPECT_NE(ValidateTrainingConfig(graphs).message().find("config.cuda_graphs"), std::string::npos);
}

// --cuda-graphs on is refused where no rank could capture: fp16 (its loss
// scaling decides on the host) and data-parallel jobs; auto runs those eagerly.
TEST(TrainingConfigTest, CudaGraphsOnIsRefusedForFp16AndDataParallelJobs) {
  v1::SubmitJobRequest r;
  r.mutable_config()->set_model(v1::MESOINCEPTION4);
  r.mutable_config()->set_data("/shared/shards");
  r.mutable_config()->set_epochs(1);
  r.mutable_config()->set_batch_size(32);
  r.set_world_size(1);
  r.mutable_config()->set_cuda_graphs(v1::CUDA_GRAPHS_ON);
  EXPECT_TRUE(ValidateSubmitRequest(r).ok()) << ValidateSubmitRequest(r);
  r.set_world_size(2);
  absl::Status st = ValidateSubmitRequest(r);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("config.cuda_graphs (--cuda-graphs): on needs world_size 1, got 2"), std::string::npos)
      << st;
  r.mutable_config()->set_cuda_graphs(v1::CUDA_GRAPHS_AUTO);
  EXPECT_TRUE(ValidateSubmitRequest(r).ok());
  r.set_world_size(1);
  r.mutable_config()->set_cuda_graphs(v1::CUDA_GRAPHS_ON);
  r.mutable_config()->set_precision(v1::FP16);
  st = ValidateSubmitRequest(r);
  EXPECT_NE(st.message().find("--precision fp16"), std::string::npos) << st;
  EXPECT_EQ(*ParseCudaGraphs("off"), v1::CUDA_GRAPHS_OFF);
  EXPECT_EQ(*ParseCudaGraphs(""), v1::CUDA_GRAPHS_UNSPECIFIED);
  EXPECT_NE(ParseCudaGraphs("yes").status().message().find("known: auto, on, off"), std::string::npos);
}

// A job the coordinator stored when these fields were strings (1, 7, 8, 19).
TEST(TrainingConfigTest, ConfigsStoredWithNamesAreUpgraded) {
  v1::TrainingConfig old;
  old.set_data("/shared/shards");
  old.set_epochs(3);
  auto* unknown = old.GetReflection()->MutableUnknownFields(&old);
  unknown->AddLengthDelimited(1, "resnet50-vggface");
  unknown->AddLengthDelimited(7, "mse");
  unknown->AddLengthDelimited(8, "notebook");
  unknown->AddLengthDelimited(19, "fp16");
  v1::TrainingConfig read;
  ASSERT_TRUE(read.ParseFromString(old.SerializeAsString()));
  EXPECT_EQ(read.model(), v1::MODEL_UNSPECIFIED);  // what a plain parse sees
  EXPECT_TRUE(UpgradeStoredConfig(&read));
  EXPECT_EQ(read.model(), v1::RESNET50_VGGFACE);
  EXPECT_EQ(read.loss(), v1::MSE);
  EXPECT_EQ(read.lr_schedule(), v1::NOTEBOOK);
  EXPECT_EQ(read.precision(), v1::FP16);
  EXPECT_EQ(read.epochs(), 3);
  EXPECT_TRUE(read.GetReflection()->GetUnknownFields(read).empty());
  v1::TrainingConfig weird;
  weird.GetReflection()->MutableUnknownFields(&weird)->AddLengthDelimited(1, "alexnet");
  EXPECT_FALSE(UpgradeStoredConfig(&weird));
  EXPECT_EQ(weird.model(), v1::MODEL_UNSPECIFIED);
}

}  // namespace
}  // namespace dfc
