package dashboard

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"html/template"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Auth says who may use the dashboard's actions: the holders of the policy
// API's credentials. Everyone else gets a read-only view.
type Auth struct {
	// TokenHash is the sha256 of the policy API's bearer token (nil: no
	// token). A caller proves it with Authorization: Bearer <token>, or by
	// logging in with it (an HttpOnly, SameSite=Strict session cookie).
	TokenHash *[32]byte
	// ClientCerts accepts a verified TLS client certificate (mTLS) when the
	// dashboard is served over TLS with client verification.
	ClientCerts bool
	// Open lets every caller act: the API itself needs no credentials
	// (loopback, no token, no mTLS) and neither listener leaves loopback.
	Open bool
	// RequireForRead hides the pages and their data from callers who have
	// not proved the token too (a dashboard off loopback): they get a login
	// form and 401.
	RequireForRead bool
	// Limiter, if set, slows down token guessing at the login form: a
	// source it does not allow is refused (429) before the token is read,
	// and each wrong token is reported to it.
	Limiter Limiter
}

// Limiter rate-limits failed authentication per source address. It must be
// safe for concurrent use.
type Limiter interface {
	Allow(source string) (ok bool, retryAfter time.Duration)
	Failed(source string)
}

// SessionCookie holds the dashboard session.
const SessionCookie = "shiftplane_session"

// CSRFHeader must carry the session's CSRF token on every action a session
// (cookie) authenticates.
const CSRFHeader = "X-CSRF-Token"

const sessionTTL = 12 * time.Hour

// maxSessions bounds the session table; the oldest go first.
const maxSessions = 1024

type session struct {
	csrf    string
	authed  bool // logged in with the token (not just an open-mode visitor)
	expires time.Time
}

type sessions struct {
	mu sync.Mutex
	m  map[string]*session
}

func newSessions() *sessions { return &sessions{m: map[string]*session{}} }

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (s *sessions) create(authed bool) (string, *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for id, v := range s.m {
		if now.After(v.expires) {
			delete(s.m, id)
		}
	}
	for len(s.m) >= maxSessions {
		var oldest string
		for id, v := range s.m {
			if oldest == "" || v.expires.Before(s.m[oldest].expires) {
				oldest = id
			}
		}
		delete(s.m, oldest)
	}
	id := randomToken()
	v := &session{csrf: randomToken(), authed: authed, expires: now.Add(sessionTTL)}
	s.m[id] = v
	return id, v
}

func (s *sessions) get(id string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[id]
	if !ok || time.Now().After(v.expires) {
		return nil
	}
	return v
}

func (s *sessions) drop(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, id)
}

// identity is what a request proved.
type identity struct {
	ok      bool     // may act
	via     string   // "token", "session", "client certificate", "open"
	bearer  bool     // proved by a header: no CSRF risk
	session *session // the cookie's session, if any
}

// needsSession: a caller that may act through ambient credentials (open
// mode, a client certificate) gets a session for its CSRF token.
func (i identity) needsSession() bool { return i.ok && !i.bearer && i.session == nil }

func (d *Dashboard) tokenOK(got string) bool {
	if d.o.Auth.TokenHash == nil || got == "" {
		return false
	}
	h := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(h[:], d.o.Auth.TokenHash[:]) == 1
}

func (d *Dashboard) authenticate(r *http.Request) identity {
	var sess *session
	if c, err := r.Cookie(SessionCookie); err == nil {
		sess = d.sessions.get(c.Value)
	}
	if a := r.Header.Get("Authorization"); len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		if d.tokenOK(strings.TrimSpace(a[7:])) {
			return identity{ok: true, via: "token", bearer: true, session: sess}
		}
		return identity{session: sess}
	}
	switch {
	case sess != nil && sess.authed:
		return identity{ok: true, via: "session", session: sess}
	case d.o.Auth.ClientCerts && r.TLS != nil && len(r.TLS.VerifiedChains) > 0:
		return identity{ok: true, via: "client certificate", session: sess}
	case d.o.Auth.Open:
		return identity{ok: true, via: "open", session: sess}
	}
	return identity{session: sess}
}

// ensureSession gives a caller with ambient credentials a session cookie
// carrying its CSRF token.
func (d *Dashboard) ensureSession(w http.ResponseWriter, r *http.Request, who identity) identity {
	id, s := d.sessions.create(false)
	setCookie(w, r, id, sessionTTL)
	who.session = s
	return who
}

func setCookie(w http.ResponseWriter, r *http.Request, value string, ttl time.Duration) {
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: value, Path: "/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: int(ttl / time.Second)})
}

// checkCSRF refuses a state-changing request that a page of another site
// could have made: a cross-site Sec-Fetch-Site or Origin, or (for cookie and
// ambient credentials) a missing or wrong CSRF token.
func (d *Dashboard) checkCSRF(r *http.Request, who identity) error {
	if err := sameOrigin(r); err != nil {
		return err
	}
	if who.bearer {
		return nil
	}
	if who.session == nil {
		return errors.New("no dashboard session: reload the page")
	}
	got := r.Header.Get(CSRFHeader)
	if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(who.session.csrf)) != 1 {
		return errors.New("missing or wrong " + CSRFHeader + " header")
	}
	return nil
}

func sameOrigin(r *http.Request) error {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return errors.New("cross-site request refused (Sec-Fetch-Site: " + r.Header.Get("Sec-Fetch-Site") + ")")
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return errors.New("cross-origin request refused (Origin: " + o + ")")
		}
	}
	return nil
}

// AuthView is what the page knows of its caller.
type AuthView struct {
	CanAct bool   `json:"canAct"`
	Via    string `json:"via,omitempty"`
	CSRF   string `json:"csrf,omitempty"`
	// Login: a token exists, so logging in would allow the actions.
	Login  bool `json:"login"`
	Logout bool `json:"logout"`
}

func (d *Dashboard) authView(who identity) AuthView {
	v := AuthView{CanAct: who.ok, Via: who.via}
	if who.ok && who.session != nil {
		v.CSRF = who.session.csrf
	}
	if who.ok && who.bearer {
		v.CSRF = ""
	}
	v.Login = !who.ok && d.o.Auth.TokenHash != nil
	v.Logout = who.via == "session"
	return v
}

// login checks the token from the form and starts a session.
func (d *Dashboard) login(w http.ResponseWriter, r *http.Request) {
	if err := sameOrigin(r); err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	next := r.PostFormValue("next")
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.Contains(next, "\\") {
		next = "/"
	}
	src := r.RemoteAddr
	if h, _, err := net.SplitHostPort(src); err == nil {
		src = h
	}
	if lim := d.o.Auth.Limiter; lim != nil {
		if ok, wait := lim.Allow(src); !ok {
			w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
			http.Error(w, "too many failed logins from this address; try again later", http.StatusTooManyRequests)
			return
		}
	}
	if !d.tokenOK(r.PostFormValue("token")) {
		if lim := d.o.Auth.Limiter; lim != nil {
			lim.Failed(src)
		}
		d.log.Warn("dashboard login refused: wrong token", "peer", r.RemoteAddr)
		http.Redirect(w, r, next+sep(next)+"login=failed", http.StatusSeeOther)
		return
	}
	id, _ := d.sessions.create(true)
	setCookie(w, r, id, sessionTTL)
	d.log.Info("dashboard login", "peer", r.RemoteAddr)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func sep(u string) string {
	if strings.Contains(u, "?") {
		return "&"
	}
	return "?"
}

func (d *Dashboard) logout(w http.ResponseWriter, r *http.Request) {
	if err := sameOrigin(r); err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	if c, err := r.Cookie(SessionCookie); err == nil {
		d.sessions.drop(c.Value)
	}
	setCookie(w, r, "", -time.Second)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// readable serves h only to a caller who may read: everyone, unless
// Auth.RequireForRead. A page answers others with a login form.
func (d *Dashboard) readable(h http.HandlerFunc, page bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !d.o.Auth.RequireForRead || d.authenticate(r).ok {
			h(w, r)
			return
		}
		if !page {
			writeJSONError(w, http.StatusUnauthorized, "authentication required: log in with the policy API token, or send Authorization: Bearer <token>")
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusUnauthorized)
		_ = loginTmpl.Execute(w, r.URL.Path)
	}
}

var loginTmpl = template.Must(template.New("login").Parse(`<!doctype html><meta charset="utf-8"><title>shiftplane: log in</title>
<form method="post" action="/login"><p>This dashboard needs the policy API token.</p>
<input type="hidden" name="next" value="{{.}}"><input type="password" name="token" autocomplete="current-password" autofocus>
<button type="submit">Log in</button></form>
`))
