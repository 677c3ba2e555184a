package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	"github.com/skiffproxy/skiff/dataplane"
	"github.com/skiffproxy/skiff/dataplane/admin"
	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/statsconfig"
)

// adminFlags are the flags of 'skiff run' about the admin API.
type adminFlags struct {
	allowRemote  bool
	tcpMutations bool
}

func (f *adminFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&f.allowRemote, "admin-allow-remote", false,
		"allow the bootstrap's admin.address to be other than loopback (the admin API shows the configuration and can drain skiff)")
	fs.BoolVar(&f.tcpMutations, "admin-tcp-mutations", false,
		"accept the admin calls that change skiff (drain, restart, log level) over admin.address too, not only over <runtime-dir>/admin.sock")
}

// adminConfig is what serve needs to run the admin API.
type adminConfig struct {
	adminFlags
	runtimeDir string
	levels     *slog.LevelVar
	tags       *statsconfig.Tags    // the bootstrap's stats_config's
	types      *filter.TypeResolver // the registry's config types
	// inheritedTCP is the admin.address socket a hot-restart parent handed
	// over (nil: bind it).
	inheritedTCP *os.File
	// shutdown is the admin API's Shutdown (quitquitquit).
	shutdown func()
}

// adminRun is the running admin API.
type adminRun struct {
	srv  *admin.Server // nil when there is no admin API
	tcp  net.Listener  // the admin.address listener, nil if none
	stop func()
}

// setXDS gives the admin API the xDS client's status (CSDS, config dump).
func (a *adminRun) setXDS(x admin.XDSStatus) {
	if a.srv != nil {
		a.srv.SetXDS(x)
	}
}

// checkAdmin checks the bootstrap's admin.address against the flags, so that a
// refused address stops skiff before anything is bound.
func checkAdmin(b *bootstrapv3.Bootstrap, source string, f adminFlags) error {
	if _, err := admin.TCPAddress(b, f.allowRemote); err != nil {
		return fmt.Errorf("%s: %w", source, err)
	}
	return nil
}

// startAdmin binds the admin API's sockets, <runtime-dir>/admin.sock and the
// bootstrap's admin.address, and serves it. The server reports INITIALIZING
// until srv applies its first configuration, then LIVE, and DRAINING once ctx
// is done. Its stop method stops the admin API and waits for it. A nil cfg
// serves nothing.
func startAdmin(ctx context.Context, srv *dataplane.Server, b *bootstrapv3.Bootstrap, source string, log *slog.Logger, cfg *adminConfig, hr *hotRestart) (*adminRun, error) {
	if cfg == nil {
		return &adminRun{stop: func() {}}, nil
	}
	tcpAddr, err := admin.TCPAddress(b, cfg.allowRemote)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	var lns []net.Listener
	sockPath := filepath.Join(cfg.runtimeDir, admin.SocketName)
	uln, err := admin.ListenUnix(sockPath)
	if err != nil {
		return nil, err
	}
	sockID := fileID(sockPath)
	lns = append(lns, uln)
	var tln net.Listener
	if tcpAddr != "" {
		if f := cfg.inheritedTCP; f != nil {
			// The parent's socket: both answer until the parent hands over.
			tln, err = net.FileListener(f)
			f.Close()
		} else {
			tln, err = net.Listen("tcp", tcpAddr)
		}
		if err != nil {
			uln.Close()
			return nil, fmt.Errorf("%s: admin.address: %w", source, err)
		}
		lns = append(lns, tln)
	} else if cfg.inheritedTCP != nil {
		cfg.inheritedTCP.Close()
	}

	adm := admin.New(admin.Options{
		Logger:       log,
		Dataplane:    srv,
		Stats:        srv.Stats(),
		Tags:         cfg.tags,
		Types:        cfg.types,
		Bootstrap:    b,
		Levels:       cfg.levels,
		Version:      versionString(),
		StartTime:    time.Now(),
		RuntimeDir:   cfg.runtimeDir,
		TCPMutations: cfg.tcpMutations,
		HotRestart:   hotRestartHook(hr),
		RestartEpoch: restartEpoch(hr),
		Shutdown:     cfg.shutdown,
	})
	var wg sync.WaitGroup
	for _, ln := range lns {
		log.Info("admin listening", "address", ln.Addr().String(), "network", ln.Addr().Network())
		wg.Go(func() {
			if err := adm.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
				log.Error("admin API stopped serving", "address", ln.Addr().String(), "error", err)
			}
		})
	}
	stopDraining := context.AfterFunc(ctx, adm.SetDraining)
	return &adminRun{srv: adm, tcp: tln, stop: func() {
		stopDraining()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		adm.Shutdown(sctx)
		wg.Wait()
		if hr == nil || !hr.wasHandedOver() {
			// A successor binds its own admin.sock; the inode number of the
			// one removed for it may be reused, so identity alone is not proof.
			removeIfSame(sockPath, sockID)
		}
	}}, nil
}

// fileID identifies the file at path (device and inode), zero if there is none.
func fileID(path string) [2]uint64 {
	fi, err := os.Lstat(path)
	if err != nil {
		return [2]uint64{}
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return [2]uint64{}
	}
	return [2]uint64{st.Dev, st.Ino}
}

// removeIfSame removes path if it is still the file identified by id.
func removeIfSame(path string, id [2]uint64) {
	if id != ([2]uint64{}) && fileID(path) == id {
		os.Remove(path)
	}
}

// hotRestartHook is the admin API's StartHotRestart: it starts a successor and
// waits until it took over (or failed).
func hotRestartHook(hr *hotRestart) func(ctx context.Context, binary string) (int, uint32, error) {
	if hr == nil {
		return nil
	}
	return func(ctx context.Context, binary string) (int, uint32, error) {
		pid, err := hr.start(ctx, binary)
		return pid, hr.epoch + 1, err
	}
}

func restartEpoch(hr *hotRestart) uint32 {
	if hr == nil {
		return 0
	}
	return hr.epoch
}
