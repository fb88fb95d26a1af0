#pragma once
// What a run shows: metrics as JSON lines and CSV, a progress line, and an SVG plot of the
// training and validation loss written next to the metrics.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mdlm/io/safetensors.hpp"  // write_file_atomically

namespace mdlm {

struct MetricPoint {
  std::int64_t step;
  double value;
};

class MetricsLog {
 public:
  // A new log (resume_step < 0: the files start empty), or the log of a run resumed from a
  // checkpoint of step `resume_step`: the rows the files hold up to that step are kept (and
  // plotted again), the rows after it (written by the run that died after its last checkpoint
  // and will be written again now) are cut, so no step appears twice. Both files are rewritten
  // atomically from metrics.jsonl before the run appends to them.
  explicit MetricsLog(const std::filesystem::path& dir, std::int64_t resume_step = -1) : dir_(dir) {
    const auto jsonl_path = dir / "metrics.jsonl", csv_path = dir / "metrics.csv";
    if (resume_step >= 0 && std::filesystem::exists(jsonl_path)) {
      std::string kept_jsonl, kept_csv = kCsvHeader;
      std::ifstream in(jsonl_path);
      std::string line;
      std::int64_t line_no = 0;
      while (std::getline(in, line)) {
        ++line_no;
        if (line.empty()) continue;
        nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer() ||
            !j.contains("split") || !j.contains("loss")) {
          // A torn last line (the process died mid-write) is dropped; anything else is an error.
          MDLM_CHECK(in.peek() == std::char_traits<char>::eof(), jsonl_path.string(), ": line ", line_no,
                     " is not a metrics row: ", line.substr(0, 80));
          continue;
        }
        const std::int64_t step = j["step"].get<std::int64_t>();
        if (step > resume_step) continue;
        const std::string split = j["split"].is_string() ? j["split"].get<std::string>() : "";
        auto num = [&](const char* key) { return j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN; };
        const double loss = num("loss");
        kept_jsonl += j.dump() + "\n";
        if (split == "train") {
          kept_csv += csv_train_row(step, loss, num("lr"), num("grad_norm"), num("tokens_per_s"));
          train_.push_back({step, loss});
        } else {
          kept_csv += csv_valid_row(step, loss, num("ppl"));
          valid_.push_back({step, loss});
        }
      }
      in.close();
      SafeTensorsWriter::write_file_atomically(jsonl_path, kept_jsonl);
      SafeTensorsWriter::write_file_atomically(csv_path, kept_csv);
      jsonl_.open(jsonl_path, std::ios::app);
      csv_.open(csv_path, std::ios::app);
    } else {
      jsonl_.open(jsonl_path, std::ios::trunc);
      csv_.open(csv_path, std::ios::trunc);
      csv_ << kCsvHeader;
    }
    if (!jsonl_ || !csv_) MDLM_FAIL("cannot write metrics in '", dir.string(), "'");
    csv_.flush();
  }
  void train(std::int64_t step, double loss, double lr, double grad_norm, double tokens_per_s) {
    nlohmann::json j{{"step", step}, {"split", "train"}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm},
                     {"tokens_per_s", tokens_per_s}};
    jsonl_ << j.dump() << "\n";
    csv_ << csv_train_row(step, loss, lr, grad_norm, tokens_per_s);
    jsonl_.flush();
    csv_.flush();
    train_.push_back({step, loss});
  }
  void valid(std::int64_t step, double nats, double ppl) {
    nlohmann::json j{{"step", step}, {"split", "valid"}, {"loss", nats}, {"ppl", ppl}};
    jsonl_ << j.dump() << "\n";
    csv_ << csv_valid_row(step, nats, ppl);
    jsonl_.flush();
    csv_.flush();
    valid_.push_back({step, nats});
  }
  const std::vector<MetricPoint>& train_points() const { return train_; }
  const std::vector<MetricPoint>& valid_points() const { return valid_; }
  void write_plot(const std::string& title) const;

 private:
  static constexpr const char* kCsvHeader = "step,split,loss,ppl,lr,grad_norm,tokens_per_s\n";
  static std::string csv_train_row(std::int64_t step, double loss, double lr, double grad_norm, double tokens_per_s) {
    std::ostringstream o;
    o << step << ",train," << loss << ",," << lr << "," << grad_norm << "," << tokens_per_s << "\n";
    return o.str();
  }
  static std::string csv_valid_row(std::int64_t step, double nats, double ppl) {
    std::ostringstream o;
    o << step << ",valid," << nats << "," << ppl << ",,,\n";
    return o.str();
  }
  std::filesystem::path dir_;
  std::ofstream jsonl_, csv_;
  std::vector<MetricPoint> train_, valid_;
};

// A self-contained SVG line chart of the training and validation loss against the step.
inline std::string loss_svg(const std::vector<MetricPoint>& train, const std::vector<MetricPoint>& valid,
                            const std::string& title) {
  const double w = 720, h = 420, l = 70, r = 20, t = 40, b = 50;
  double xmax = 1, ymin = INFINITY, ymax = -INFINITY;
  for (const auto* series : {&train, &valid}) {
    for (const auto& p : *series) {
      if (!std::isfinite(p.value)) continue;
      xmax = std::max(xmax, static_cast<double>(p.step));
      ymin = std::min(ymin, p.value);
      ymax = std::max(ymax, p.value);
    }
  }
  if (!std::isfinite(ymin)) ymin = 0, ymax = 1;
  if (ymax - ymin < 1e-9) ymax = ymin + 1;
  auto X = [&](double s) { return l + (w - l - r) * s / xmax; };
  auto Y = [&](double v) { return h - b - (h - t - b) * (v - ymin) / (ymax - ymin); };
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << w << "\" height=\"" << h << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"" << w / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << title << "</text>\n";
  o << "<line x1=\"" << l << "\" y1=\"" << h - b << "\" x2=\"" << w - r << "\" y2=\"" << h - b << "\" stroke=\"black\"/>\n";
  o << "<line x1=\"" << l << "\" y1=\"" << t << "\" x2=\"" << l << "\" y2=\"" << h - b << "\" stroke=\"black\"/>\n";
  for (int k = 0; k <= 4; ++k) {
    const double v = ymin + (ymax - ymin) * k / 4, s = xmax * k / 4;
    o << "<text x=\"" << l - 6 << "\" y=\"" << Y(v) + 4 << "\" text-anchor=\"end\">" << std::round(v * 1000) / 1000 << "</text>\n";
    o << "<line x1=\"" << l << "\" y1=\"" << Y(v) << "\" x2=\"" << w - r << "\" y2=\"" << Y(v) << "\" stroke=\"#ddd\"/>\n";
    o << "<text x=\"" << X(s) << "\" y=\"" << h - b + 18 << "\" text-anchor=\"middle\">" << static_cast<std::int64_t>(s) << "</text>\n";
  }
  o << "<text x=\"" << (l + w - r) / 2 << "\" y=\"" << h - 12 << "\" text-anchor=\"middle\">step</text>\n";
  o << "<text x=\"16\" y=\"" << (t + h - b) / 2 << "\" transform=\"rotate(-90 16 " << (t + h - b) / 2
    << ")\" text-anchor=\"middle\">loss (nats/token)</text>\n";
  auto line = [&](const std::vector<MetricPoint>& pts, const char* color, const char* name, int row) {
    if (pts.empty()) return;
    o << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"1.5\" points=\"";
    for (const auto& p : pts) {
      if (std::isfinite(p.value)) o << X(static_cast<double>(p.step)) << "," << Y(p.value) << " ";
    }
    o << "\"/>\n";
    if (pts.size() < 40) {
      for (const auto& p : pts) {
        if (std::isfinite(p.value)) o << "<circle cx=\"" << X(static_cast<double>(p.step)) << "\" cy=\"" << Y(p.value) << "\" r=\"3\" fill=\"" << color << "\"/>\n";
      }
    }
    o << "<line x1=\"" << w - 170 << "\" y1=\"" << t + 10 + 18 * row << "\" x2=\"" << w - 145 << "\" y2=\"" << t + 10 + 18 * row
      << "\" stroke=\"" << color << "\" stroke-width=\"2\"/><text x=\"" << w - 140 << "\" y=\"" << t + 14 + 18 * row << "\">" << name << "</text>\n";
  };
  line(train, "#1f77b4", "train", 0);
  line(valid, "#d62728", "validation (EMA)", 1);
  o << "</svg>\n";
  return o.str();
}

inline void MetricsLog::write_plot(const std::string& title) const {
  SafeTensorsWriter::write_file_atomically(dir_ / "loss.svg", loss_svg(train_, valid_, title));
}

inline std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<std::int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60));
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  else std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  return buf;
}

}  // namespace mdlm
