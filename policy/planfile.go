package policy

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// MaxPlanFileSize bounds a plan file. Plans are a few KiB; anything this
// large is a mistake (a log, an image, /dev/zero behind a symlink), and
// reading it would stall whoever reads it.
const MaxPlanFileSize = 4 << 20

// NotPlanFileError is ReadPlanFile's refusal of a path that is not a
// regular file, or is over MaxPlanFileSize.
type NotPlanFileError struct {
	Path   string
	Reason string // e.g. "not a regular file (fifo)"
}

func (e *NotPlanFileError) Error() string { return e.Path + ": " + e.Reason }

// ReadPlanFile reads the plan file at path and returns its bytes and its
// file info (the modification time is the file's, taken from the open file).
// It reads only regular files (or symlinks to them) of at most
// MaxPlanFileSize bytes, and never blocks on a FIFO or a device: the type
// and size are checked before the file is opened, the file is opened
// non-blocking, and checked again once open. Errors name the path.
func ReadPlanFile(path string) ([]byte, fs.FileInfo, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, nil, err // *PathError names the path
	}
	if err := checkPlanFile(path, st); err != nil {
		return nil, nil, err
	}
	// O_NONBLOCK: if the path became a FIFO since the Stat, the open
	// returns at once instead of waiting for a writer.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err = f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if err := checkPlanFile(path, st); err != nil {
		return nil, nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxPlanFileSize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > MaxPlanFileSize {
		return nil, nil, &NotPlanFileError{Path: path, Reason: "grew over the " + sizeText(MaxPlanFileSize) + " plan file limit while being read"}
	}
	return data, st, nil
}

func checkPlanFile(path string, st fs.FileInfo) error {
	if !st.Mode().IsRegular() {
		kind := fileKind(st.Mode())
		if lst, err := os.Lstat(path); err == nil && lst.Mode()&fs.ModeSymlink != 0 {
			kind = "a symlink to a " + kind
		}
		return &NotPlanFileError{Path: path, Reason: "not a regular file (" + kind + ")"}
	}
	if st.Size() > MaxPlanFileSize {
		size, limit := sizeText(st.Size()), sizeText(MaxPlanFileSize)
		if size == limit {
			size = fmt.Sprintf("%d bytes", st.Size()) // just over: "4 MiB is over 4 MiB" would read wrong
		}
		return &NotPlanFileError{Path: path, Reason: size + " is over the " + limit + " plan file limit"}
	}
	return nil
}

func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "irregular file"
}

// sizeText prints a byte count in the unit a reader expects: 4 MiB, 9.1 MiB, 512 KiB.
func sizeText(n int64) string {
	const kib, mib = 1 << 10, 1 << 20
	trim := func(f float64, unit string) string {
		s := fmt.Sprintf("%.1f", f)
		if len(s) > 2 && s[len(s)-2:] == ".0" {
			s = s[:len(s)-2]
		}
		return s + " " + unit
	}
	switch {
	case n >= mib:
		return trim(float64(n)/mib, "MiB")
	case n >= kib:
		return trim(float64(n)/kib, "KiB")
	}
	return fmt.Sprintf("%d bytes", n)
}

// ReadProblem turns a ReadPlanFile error into the Problem of file.
func ReadProblem(file string, err error) Problem {
	var npf *NotPlanFileError
	var pe *fs.PathError
	switch {
	case errors.As(err, &npf):
		return Problem{File: file, Msg: npf.Reason}
	case errors.As(err, &pe):
		return Problem{File: file, Msg: pe.Op + ": " + pe.Err.Error()}
	}
	return Problem{File: file, Msg: err.Error()}
}
