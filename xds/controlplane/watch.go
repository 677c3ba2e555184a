package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

const (
	// settle is how long the directory must be quiet after a change before it is
	// read again, so that a burst of events (an editor's save, a git checkout, a
	// ConfigMap update) makes one reload.
	settle = 100 * time.Millisecond
	// maxDelay bounds the wait when changes never stop coming.
	maxDelay = time.Second
)

// watcher watches a directory tree. fsnotify watches one directory at a time, so
// each directory below the root is added, and each created later when its event
// arrives. Watching directories rather than files also sees the editors that save
// by writing a new file and renaming it over the old one.
type watcher struct {
	root string
	w    *fsnotify.Watcher
}

func newWatcher(root string) (*watcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watching %s: %w", root, err)
	}
	wt := &watcher{root: root, w: w}
	if err := wt.addTree(root); err != nil {
		w.Close()
		return nil, err
	}
	return wt, nil
}

// addTree watches dir and the directories below it, except those loadDir skips.
func (wt *watcher) addTree(dir string) error {
	top := dir
	if dir == wt.root {
		top = walkRoot(dir)
	}
	return filepath.WalkDir(top, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && dir != wt.root {
				return nil // gone already; its removal is an event of its own
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if !(dir == wt.root && path == top) && strings.HasPrefix(d.Name(), ".") {
			return fs.SkipDir
		}
		if err := wt.w.Add(filepath.Clean(path)); err != nil {
			return fmt.Errorf("watching %s: %w", path, err)
		}
		return nil
	})
}

// run calls changed, at most once per settle period, after changes below the root,
// until ctx is done. Problems are passed to report.
func (wt *watcher) run(ctx context.Context, changed func(), report func(error)) {
	pokes := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		debounce(ctx, pokes, settle, maxDelay, changed)
	}()
	defer func() {
		wt.w.Close()
		<-done
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-wt.w.Events:
			if !ok {
				return
			}
			if ev.Has(fsnotify.Create) {
				if fi, err := os.Lstat(ev.Name); err == nil && fi.IsDir() {
					if err := wt.addTree(ev.Name); err != nil {
						report(err)
					}
				}
			}
			select {
			case pokes <- struct{}{}:
			default: // a reload is already due
			}
		case err, ok := <-wt.w.Errors:
			if !ok {
				return
			}
			report(err)
			// An overflow lost events: read everything again to be sure.
			select {
			case pokes <- struct{}{}:
			default:
			}
		}
	}
}

// debounce calls fn once pokes have been quiet for settle after one arrived, or
// once maxDelay has passed since the first of a burst that does not stop. It
// returns when ctx is done.
func debounce(ctx context.Context, pokes <-chan struct{}, settle, maxDelay time.Duration, fn func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-pokes:
		}
		deadline := time.Now().Add(maxDelay)
		t := time.NewTimer(settle)
	burst:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-pokes:
				t.Reset(min(settle, time.Until(deadline)))
			case <-t.C:
				break burst
			}
		}
		fn()
	}
}
