#pragma once
// A file written in full before it appears: bytes go to "<path>.tmp", and commit() flushes them
// (fsync), renames the temporary over <path> and syncs the folder. A writer destroyed without
// commit() (an error, an interruption) removes its temporary, so no half-written file ever
// carries the final name. Errors name the file.
#include <cstddef>
#include <cstdint>
#include <string>

namespace dsv3 {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();

  // Appends bytes at the end (buffered).
  void write(const void* data, size_t size);
  // Overwrites bytes at `offset` (which must already have been written), e.g. a header.
  void write_at(uint64_t offset, const void* data, size_t size);
  uint64_t size() const { return size_; }
  void commit();

  const std::string& path() const { return path_; }

 private:
  void flush_buffer();
  std::string path_, temp_path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  std::string buffer_;
  bool committed_ = false;
};

// Writes a whole small file atomically (e.g. a manifest).
void write_file_atomically(const std::string& path, const std::string& contents);

}  // namespace dsv3
