#include "train/data/atomic_file.h"

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
#include <unistd.h>

#include "core/error.h"

namespace dsv3 {
namespace {

constexpr size_t kBufferBytes = 4 << 20;

std::string errno_text() { return std::strerror(errno); }

void write_all(int fd, const char* data, size_t size, uint64_t offset, const std::string& where) {
  while (size > 0) {
    ssize_t n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("{}: write failed: {}", where, errno_text());
    }
    data += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), temp_path_(path_ + ".tmp") {
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("{}: cannot create: {}", temp_path_, errno_text());
  buffer_.reserve(kBufferBytes);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void AtomicFile::flush_buffer() {
  uint64_t start = size_ - buffer_.size();
  write_all(fd_, buffer_.data(), buffer_.size(), start, temp_path_);
  buffer_.clear();
}

void AtomicFile::write(const void* data, size_t size) {
  DSV3_CHECK(!committed_, "{}: write after commit", path_);
  if (buffer_.size() + size > kBufferBytes) {
    flush_buffer();
  }
  if (size >= kBufferBytes) {
    write_all(fd_, static_cast<const char*>(data), size, size_, temp_path_);
    size_ += size;
    return;
  }
  buffer_.append(static_cast<const char*>(data), size);
  size_ += size;
}

void AtomicFile::write_at(uint64_t offset, const void* data, size_t size) {
  DSV3_CHECK(offset + size <= size_, "{}: write_at past the end", path_);
  flush_buffer();
  write_all(fd_, static_cast<const char*>(data), size, offset, temp_path_);
}

void AtomicFile::commit() {
  DSV3_CHECK(!committed_, "{}: committed twice", path_);
  flush_buffer();
  if (::fsync(fd_) != 0) fail("{}: fsync failed: {}", temp_path_, errno_text());
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail("{}: close failed: {}", temp_path_, errno_text());
  }
  fd_ = -1;
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0)
    fail("{}: cannot rename {} over it: {}", path_, temp_path_, errno_text());
  committed_ = true;
  std::string dir = std::filesystem::path(path_).parent_path().string();
  if (dir.empty()) dir = ".";
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    int rc = ::fsync(dfd);
    int err = errno;
    ::close(dfd);
    if (rc != 0) fail("{}: fsync of its folder failed: {}", path_, std::strerror(err));
  }
}

void write_file_atomically(const std::string& path, const std::string& contents) {
  AtomicFile file(path);
  file.write(contents.data(), contents.size());
  file.commit();
}

}  // namespace dsv3
