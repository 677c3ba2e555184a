package tlscontext

import (
	"errors"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// ErrSDSUnsupported is wrapped by the errors of TLS contexts that take a
// secret from a config source (an SdsSecretConfig with an sds_config).
var ErrSDSUnsupported = errors.New("secrets from a config source (SDS) are not supported by skiff yet")

// Secrets are the secrets TLS contexts may name in their SDS secret configs
// without an sds_config: the bootstrap's static_resources.secrets, by name.
type Secrets map[string]*tlsv3.Secret

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

// lookup finds the secret an SdsSecretConfig names. Secrets from a config
// source (sds_config) are refused: skiff has static secrets only.
func (s Secrets) lookup(sc *tlsv3.SdsSecretConfig) (*tlsv3.Secret, error) {
	if err := cfgerr.OnlyFields(sc, "name", "sds_config"); err != nil {
		return nil, err
	}
	if sc.GetSdsConfig() != nil {
		return nil, cfgerr.Errorf("sds_config", "%w: define secret %q in static_resources.secrets and leave sds_config out", ErrSDSUnsupported, sc.GetName())
	}
	sec, ok := s[sc.GetName()]
	if !ok {
		return nil, cfgerr.Errorf("name", "no secret %q in static_resources.secrets", sc.GetName())
	}
	return sec, nil
}

// validationContext is the validation_context of the secret sc names.
func (s Secrets) validationContext(sc *tlsv3.SdsSecretConfig) (*tlsv3.CertificateValidationContext, error) {
	sec, err := s.lookup(sc)
	if err != nil {
		return nil, err
	}
	if sec.GetValidationContext() == nil {
		return nil, cfgerr.Errorf("name", "secret %q is not a validation_context", sc.GetName())
	}
	return sec.GetValidationContext(), nil
}
