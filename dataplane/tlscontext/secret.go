package tlscontext

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// ErrSecretNotReady is wrapped by the error of a handshake on a context
// whose SDS secret has not been received (Envoy's "secrets not ready").
var ErrSecretNotReady = errors.New("SDS secret not received yet")

// Secrets are the secrets TLS contexts name in their SDS secret configs.
type Secrets struct {
	// Static are the bootstrap's static_resources.secrets, by name: the
	// secrets named without an sds_config.
	Static map[string]*tlsv3.Secret
	// SDS holds the secrets received by SDS: those named with an
	// sds_config. Nil refuses such names.
	SDS *SecretStore

	// deps, when set, records the SDS secrets a build used.
	deps *[]dep
}

// SecretStore holds the current version of each secret received by SDS. A
// context built from such secrets follows them: each handshake uses the
// versions current when it starts, as Envoy updates its contexts in place
// when SDS pushes a secret, without draining a connection. A SecretStore is
// safe for concurrent use.
type SecretStore struct {
	log   *slog.Logger
	mu    sync.Mutex
	cells map[string]*secretCell
}

// secretCell is one secret name's current version (nil until received) and
// what the contexts built from it so far need it to be (a context only
// validated counts too).
type secretCell struct {
	name                 string
	sec                  atomic.Pointer[tlsv3.Secret]
	wantCert, wantVerify atomic.Bool
}

// dep is an SDS secret a context was built from, and the version it used.
type dep struct {
	cell *secretCell
	sec  *tlsv3.Secret
}

// NewSecretStore returns an empty store. log receives the errors of
// contexts that cannot be rebuilt from a new version of their secrets (they
// keep serving with the previous one).
func NewSecretStore(log *slog.Logger) *SecretStore {
	return &SecretStore{log: log, cells: map[string]*secretCell{}}
}

func (s *SecretStore) cell(name string) *secretCell {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.cells[name]
	if c == nil {
		c = &secretCell{name: name}
		s.cells[name] = c
	}
	return c
}

// Check reports whether secrets (by name, each already passing CheckSecret)
// can replace the current versions: a secret that contexts use as a
// certificate must be a tls_certificate, one they use to verify peers a
// validation_context. It returns the first secret that cannot, and why.
func (s *SecretStore) Check(secrets map[string]*tlsv3.Secret) (string, error) {
	for _, name := range slices.Sorted(maps.Keys(secrets)) {
		sec := secrets[name]
		c := s.cell(name)
		switch {
		case c.wantCert.Load() && sec.GetTlsCertificate() == nil:
			return name, errors.New("a TLS context uses it as its certificate, and it has no tls_certificate")
		case c.wantVerify.Load() && sec.GetValidationContext() == nil:
			return name, errors.New("a TLS context uses it as its validation context, and it has no validation_context")
		}
	}
	return "", nil
}

// Set makes secrets (by name) the current versions, and returns the
// versions they replace (to Set back if what they were for fails). Secrets
// it does not name keep theirs: a version stays until replaced, as Envoy
// keeps a secret SDS no longer sends.
func (s *SecretStore) Set(secrets map[string]*tlsv3.Secret) (previous map[string]*tlsv3.Secret) {
	previous = make(map[string]*tlsv3.Secret, len(secrets))
	for name, sec := range secrets {
		previous[name] = s.cell(name).sec.Swap(sec)
	}
	return previous
}

// stale reports whether a secret a build used has changed since.
func stale(deps []dep) bool {
	for _, d := range deps {
		if d.cell.sec.Load() != d.sec {
			return true
		}
	}
	return false
}

// missing returns the names of the SDS secrets a build lacked.
func missing(deps []dep) []string {
	var names []string
	for _, d := range deps {
		if d.sec == nil {
			names = append(names, d.cell.name)
		}
	}
	return names
}

// following is a built context and, if it was built from SDS secrets, how
// it follows them: the last build (its value and the versions it used) and
// how to build again. A context without SDS secrets never builds again.
type following[T any] struct {
	secrets Secrets
	build   func(Secrets) (T, error)
	mu      sync.Mutex
	last    atomic.Pointer[followed[T]]
}

// followed is one build: err is its error, ErrSecretNotReady if a secret
// was missing (v is then incomplete).
type followed[T any] struct {
	v    T
	deps []dep
	err  error
}

// follow builds a context from secrets. It returns the first build's
// error, unless it is only that an SDS secret is missing (handshakes then
// fail until it comes).
func follow[T any](secrets Secrets, build func(Secrets) (T, error)) (*following[T], error) {
	f := &following[T]{secrets: secrets, build: build}
	first := f.make()
	if first.err != nil && !errors.Is(first.err, ErrSecretNotReady) {
		return nil, first.err
	}
	f.last.Store(first)
	return f, nil
}

// bySDS reports whether the context was built from SDS secrets, and so
// follows their versions.
func (f *following[T]) bySDS() bool { return len(f.last.Load().deps) > 0 }

func (f *following[T]) make() *followed[T] {
	var deps []dep
	secrets := f.secrets
	secrets.deps = &deps
	v, err := f.build(secrets)
	if err == nil {
		if names := missing(deps); len(names) > 0 {
			err = fmt.Errorf("%w: %q", ErrSecretNotReady, names)
		}
	}
	return &followed[T]{v: v, deps: deps, err: err}
}

// current returns the value built from the current versions of the
// secrets, building it again if one changed. If the new versions do not
// build, the previous value stays (the error is logged once).
func (f *following[T]) current() (T, error) {
	last := f.last.Load()
	if stale(last.deps) {
		last = f.rebuild()
	}
	return last.v, last.err
}

func (f *following[T]) rebuild() *followed[T] {
	f.mu.Lock()
	defer f.mu.Unlock()
	last := f.last.Load()
	if !stale(last.deps) {
		return last // rebuilt meanwhile
	}
	next := f.make()
	if next.err != nil && !errors.Is(next.err, ErrSecretNotReady) {
		f.secrets.SDS.log.Warn("TLS context not updated from its new SDS secrets", "error", next.err, "keeps_previous", last.err == nil)
		if last.err == nil {
			next.v, next.err = last.v, nil
		}
	}
	f.last.Store(next)
	return next
}

// CheckSecret checks a Secret as skiff would use it: a tls_certificate whose
// certificate and key load and match, or a validation_context skiff can
// verify with. session_ticket_keys and generic_secret are refused.
func CheckSecret(sec *tlsv3.Secret) error {
	if err := cfgerr.OnlyFields(sec, "name", "tls_certificate", "validation_context"); err != nil {
		return err
	}
	if sec.GetName() == "" {
		return cfgerr.Errorf("name", "a secret needs a name")
	}
	switch t := sec.GetType().(type) {
	case *tlsv3.Secret_TlsCertificate:
		if _, err := certificate(t.TlsCertificate); err != nil {
			return cfgerr.Field("tls_certificate", err)
		}
	case *tlsv3.Secret_ValidationContext:
		if _, err := newValidator(t.ValidationContext, false); err != nil {
			return cfgerr.Field("validation_context", err)
		}
	default:
		return cfgerr.Errorf("", "a secret needs a tls_certificate or a validation_context")
	}
	return nil
}

// lookup finds the secret an SdsSecretConfig names: in the static secrets
// without an sds_config, else the current SDS version, nil (and no error)
// if none came yet. cert tells whether the context uses it as its
// certificate (else to verify peers).
func (s Secrets) lookup(sc *tlsv3.SdsSecretConfig, cert bool) (*tlsv3.Secret, error) {
	if err := cfgerr.OnlyFields(sc, "name", "sds_config"); err != nil {
		return nil, err
	}
	if sc.GetSdsConfig() == nil {
		sec, ok := s.Static[sc.GetName()]
		if !ok {
			return nil, cfgerr.Errorf("name", "no secret %q in static_resources.secrets (a secret by SDS needs an sds_config)", sc.GetName())
		}
		return sec, nil
	}
	if s.SDS == nil {
		return nil, cfgerr.Errorf("sds_config", "secrets by SDS are not available here")
	}
	if sc.GetName() == "" {
		return nil, cfgerr.Errorf("name", "an SDS secret config needs the secret's name")
	}
	c := s.SDS.cell(sc.GetName())
	if cert {
		c.wantCert.Store(true)
	} else {
		c.wantVerify.Store(true)
	}
	sec := c.sec.Load()
	if s.deps != nil {
		*s.deps = append(*s.deps, dep{cell: c, sec: sec})
	}
	return sec, nil
}

// validationContext is the validation_context of the secret sc names, nil
// if it is an SDS secret not received yet.
func (s Secrets) validationContext(sc *tlsv3.SdsSecretConfig) (*tlsv3.CertificateValidationContext, error) {
	sec, err := s.lookup(sc, false)
	if err != nil || sec == nil {
		return nil, err
	}
	if sec.GetValidationContext() == nil {
		return nil, cfgerr.Errorf("name", "secret %q is not a validation_context", sc.GetName())
	}
	return sec.GetValidationContext(), nil
}
