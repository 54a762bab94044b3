"""The sans-IO SIP parser (tfps.parse_message / tfps.validate_request / tfps.StreamFramer):
RFC 4475 torture messages, the syntax the issue lists (compact forms, folding, multi-value
headers, name-addr/addr-spec, sip/sips/tel URIs, IPv6 references, Content-Length framing),
a seeded mutation fuzz loop, and a few torture messages sent to a running `tfps.py serve`.

Rule checked everywhere: nothing but tfps.SipError ever escapes the parser."""

import random
import re
import time

import pytest

import tfps
from conftest import answers_before_options, sip_invite, udp_socket

# =============================================================================================
# RFC 4475 torture messages (public RFC test vectors, written here as Python bytes).
# The RFC writes them with CRLF line ends; they are typed with '\n' below and converted.
# Long repeated strings are built with Python repetition, as the RFC's <repeat> notation does.
# =============================================================================================

TORTURE = {}


def _msg(name, head, body=b""):
    data = head.replace("\n", "\r\n").encode("utf-8", "surrogateescape")
    TORTURE[name] = data + (body if isinstance(body, bytes) else body.replace("\n", "\r\n").encode())


def _sdp(host, t="0 0"):
    return (f"v=0\no=mhandley 29739 7272939 IN IP4 {host}\ns=-\nc=IN IP4 {host}\nt={t}\n"
            "m=audio 49217 RTP/AVP 0 12\nm=video 3227 RTP/AVP 31\na=rtpmap:31 LPC\n")


# --- 3.1.1 Valid messages -------------------------------------------------------------------

# 3.1.1.1 A short tortuous INVITE
_msg("wsinv", """INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;rport;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

""", _sdp("192.0.2.3").replace("c=IN IP4 192.0.2.3", "c=IN IP4 192.0.2.4"))

# 3.1.1.2 Wide range of valid characters (quoted BEL/NUL/DEL, UTF-8 values, odd tokens)
_msg("intmeth", """!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0
Via: SIP/2.0/TCP host1.example.com;rport;branch=z9hG4bK-.!%66*_+`'~
To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>
From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439";tag=_token~1'+`*%!-.
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/"][?}{
CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~
Max-Forwards: 255
extensionHeader-!.%*+_`'~:\ufeff\u5927\u505c\u96fb
Content-Length: 0

""")

# 3.1.1.3 Valid use of the % escaping mechanism
_msg("esc01", """INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0
To: sip:%75se%72@example.com
From: <sip:I%20have%20spaces@example.net>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 INVITE
Via: SIP/2.0/UDP host5.example.net;rport;branch=z9hG4bKkdjuw
C: application/sdp
Contact:
  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>
Content-Length: 150

""", _sdp("192.0.2.1"))

# 3.1.1.4 Escaped nulls in URIs
_msg("escnull", """REGISTER sip:example.com SIP/2.0
To: sip:null-%00-null@example.com
From: sip:null-%00-null@example.com;tag=839923423
Max-Forwards: 70
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;rport;branch=z9hG4bKkdjuw
Contact: <sip:%00@host5.example.com>
Contact: <sip:%00%00@host5.example.com>
L:0

""")

# 3.1.1.5 Use of % when it is not an escape
_msg("esc02", """RE%47IST%45R sip:registrar.example.com SIP/2.0
To: "%Z%45" <sip:resource@example.com>
From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23
Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf
Via: SIP/2.0/TCP host.example.com;rport;branch=z9hG4bK209%fzsnel234
CSeq: 29344 RE%47IST%45R
Max-Forwards: 70
Contact: <sip:alias1@host1.example.com>
C%6Fntact: <sip:alias2@host2.example.com>
Contact: <sip:alias3@host3.example.com>
l: 0

""")

# 3.1.1.6 Message with no LWS between display name and <
_msg("lwsdisp", """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0

""")

# 3.1.1.7 Long values in header fields (34 Via values, most without branch)
_LONG = "long" * 20
_vias = ["Via: SIP/2.0/TCP sip33.example.com", "v: SIP/2.0/TCP sip32.example.com",
         "V: SIP/2.0/TCP sip31.example.com", "Via: SIP/2.0/TCP sip30.example.com",
         "ViA: SIP/2.0/TCP sip29.example.com", "VIa: SIP/2.0/TCP sip28.example.com",
         "VIA: SIP/2.0/TCP sip27.example.com", "via: SIP/2.0/TCP sip26.example.com",
         "viA: SIP/2.0/TCP sip25.example.com", "vIa: SIP/2.0/TCP sip24.example.com",
         "vIA: SIP/2.0/TCP sip23.example.com", "V :  SIP/2.0/TCP sip22.example.com",
         "v :  SIP/2.0/TCP sip21.example.com", "V  : SIP/2.0/TCP sip20.example.com",
         "v  : SIP/2.0/TCP sip19.example.com", "Via : SIP/2.0/TCP sip18.example.com",
         "Via  : SIP/2.0/TCP sip17.example.com"]
_vias += [f"Via: SIP/2.0/TCP sip{n}.example.com" for n in range(16, 0, -1)]
_vias += [f"Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=very{_LONG * 3}branchvalue"]
_msg("longreq", f"""INVITE sip:user@example.com SIP/2.0
To: "I have a user name of {'extreme' * 10} proportion"<sip:user@example.com:6000;unknownparam1=very{_LONG}value;longparam{'name' * 25}=shortvalue;very{_LONG}ParameterNameWithNoValue>
F: sip:{'amazinglylongcallername' * 5}@example.net;tag={'12982' * 30}424;unknownheaderparam{'name' * 20}=unknowheaderparam{'value' * 15};unknownValuelessparam{'paramname' * 10}
Call-ID: longreq.one{'really' * 20}longcallid
CSeq: 3882340 INVITE
Unknown-{'Long' * 20}-Name: unknown-{_LONG}-value; unknown-{_LONG}-parameter-name = unknown-{_LONG}-parameter-value
""" + "\n".join(_vias) + f"""
Max-Forwards: 70
Contact: <sip:{'amazinglylongcallername' * 5}@host5.example.net>
Content-Type: application/sdp
l: 150

""", _sdp("192.0.2.1"))

# 3.1.1.8 Extra trailing octets in a UDP datagram (a second request after the first)
_msg("dblreq", """REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=43251j3j324
Max-Forwards: 8
I: dblreq.0ha0isndaksdj99sdfafnl3lk233412
Contact: sip:j.user@host.example.com
CSeq: 8 REGISTER
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492
Content-Length: 0

INVITE sip:joe@example.com SIP/2.0
t: sip:joe@example.com
From: sip:caller@example.net;tag=141334
Max-Forwards: 8
Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234
Content-Type: application/sdp
Content-Length: 150

""", _sdp("192.0.2.15"))

# 3.1.1.9 Semicolon-separated parameters in URI user part
_msg("semiuri", """OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 OPTIONS
Accept: application/sdp, application/pkcs7-mime,
        multipart/mixed, multipart/signed,
        message/sip, message/sipfrag
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
l: 0

""")

# 3.1.1.10 Varied and unknown transport types
_msg("transports", """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID:  transports.kijh4akdnaqjkwendsasfdj
Accept: application/sdp
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee
l: 0

""")

# 3.1.1.11 Multipart MIME message with a binary part (CR, LF, NUL and 8-bit octets in the body)
_blob = bytes(random.Random(4475).randrange(256) for _ in range(380)) + b"\r\n\r\n\x00\r\n"
_MPART_BODY = (b"--7a9cbec02ceef655\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\n\r\n"
               b"Hello\r\n--7a9cbec02ceef655\r\nContent-Type: application/octet-stream\r\n"
               b"Content-Transfer-Encoding: binary\r\n\r\n" + _blob + b"\r\n--7a9cbec02ceef655--\r\n")
_msg("mpart01", f"""MESSAGE sip:kumiko@example.org SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport
Max-Forwards: 70
Route: <sip:127.0.0.1:5080>
Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813gvYjcBUaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=
Contact: <sip:fluffy@127.0.0.1:5070>
To: <sip:kumiko@example.org>
From: <sip:fluffy@example.com>;tag=2fb0dcc9
Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..
CSeq: 1 MESSAGE
Content-Transfer-Encoding: binary
Content-Type: multipart/mixed;boundary=7a9cbec02ceef655
Date: Sat, 15 Oct 2005 04:44:56 GMT
User-Agent: SIPimp.org/0.2.5 (curses)
Content-Length: {len(_MPART_BODY)}

""", _MPART_BODY)

# 3.1.1.12 Unusual reason phrase (UTF-8)
_msg("unreason", """SIP/2.0 200 = 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e \u0434\u0435\u0432\u044f\u043d\u043e\u0441\u0442\u043e \u0434\u0435\u0432\u044f\u0442\u044c - \u043f\u0440\u043e\u0441\u0442\u043e\u0435
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host198.example.com>

""", _sdp("192.0.2.198"))

# 3.1.1.13 Empty reason phrase
_msg("noreason", """SIP/2.0 100 \nVia: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

""")

# --- 3.1.2 Invalid messages -----------------------------------------------------------------

# 3.1.2.1 Extraneous header field separators
_msg("badinv01", """INVITE sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=134161461246
Max-Forwards: 7
Call-ID: badinv01.0ha0isndaksdjasdf3234nas
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;;,;,,
Contact: "Joe" <sip:joe@example.org>;;;;
Content-Length: 152
Content-Type: application/sdp

""", _sdp("192.0.2.15"))

# 3.1.2.2 Content-Length larger than message
_msg("clerr", """INVITE sip:user@example.com SIP/2.0
Max-Forwards: 80
To: sip:j.user@example.com
From: sip:caller@example.net;tag=93942939o2
Contact: <sip:caller@hungry.example.net>
Call-ID: clerr.0ha0isndaksdjweiafasdk3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523
Content-Type: application/sdp
Content-Length: 9999

""", _sdp("192.0.2.155"))

# 3.1.2.3 Negative Content-Length
_msg("ncl", """INVITE sip:user@example.com SIP/2.0
Max-Forwards: 254
To: sip:j.user@example.com
From: sip:caller@example.net;tag=32394234
Call-ID: ncl.0ha0isndaksdj2193423r542w35
CSeq: 0 INVITE
Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw
Contact: <sip:caller@example53.example.net>
Content-Type: application/sdp
Content-Length: -999

""", _sdp("192.0.2.53"))

# 3.1.2.4 Request scalar fields with overlarge values
_msg("scalar02", f"""REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=239232jh3
CSeq: 36893488147419103232 REGISTER
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32
Max-Forwards: 300
Expires: 1{'0' * 100}
Contact: <sip:user@host129.example.com>
  ;expires=280297596632815
Content-Length: 0

""")

# 3.1.2.5 Response scalar fields with overlarge values
_msg("scalarlg", """SIP/2.0 503 Service Unavailable
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129
To: <sip:user@example.com>
From: <sip:other@example.net>;tag=2easdjfejw
CSeq: 9292394834772304023312 OPTIONS
Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r
Retry-After: 949302838503028349304023988
Warning: 1812 overture "In Progress"
Content-Length: 0

""")

# 3.1.2.6 Unterminated quoted string in display name
_msg("quotbal", """INVITE sip:user@example.com SIP/2.0
To: "Mr. J. User <sip:j.user@example.com>
From: sip:caller@example.net;tag=93334
Max-Forwards: 10
Call-ID: quotbal.aksdj
Contact: <sip:caller@host59.example.net>
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234
Content-Type: application/sdp
Content-Length: 152

""", _sdp("192.0.2.15"))

# 3.1.2.7 <> enclosing Request-URI
_msg("ltgtruri", """INVITE <sip:user@example.com> SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=39291
Max-Forwards: 23
Call-ID: ltgtruri.1@192.0.2.5
CSeq: 1 INVITE
Via: SIP/2.0/UDP 192.0.2.5
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 159

""", _sdp("192.0.2.5", t="3149328700 0"))

# 3.1.2.8 Malformed SIP Request-URI (embedded LWS)
_msg("lwsruri", """INVITE sip:user@example.com; lr SIP/2.0
To: sip:user@example.com;tag=3xfe-9921883-z9f
From: sip:caller@example.net;tag=231413434
Max-Forwards: 5
Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423
CSeq: 2130706432 INVITE
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 159

""", _sdp("192.0.2.1", t="3149328700 0"))

# 3.1.2.9 Multiple SP separating Request-Line elements
_msg("lwsstart", """INVITE  sip:user@example.com  SIP/2.0
Max-Forwards: 8
To: sip:user@example.com
From: sip:caller@example.net;tag=8814
Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com
CSeq: 1893884 INVITE
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 150

""", _sdp("192.0.2.1"))

# 3.1.2.10 SP characters at end of Request-Line
_msg("trws", """OPTIONS sip:remote-target@example.com SIP/2.0  
Via: SIP/2.0/TCP host1.examle.com;branch=z9hG4bK299342093
To: <sip:remote-target@example.com>
From: <sip:local-resource@example.com>;tag=329429089
Call-ID: trws.oicu34958239neffasdhr2345r
Accept: application/sdp
CSeq: 238923 OPTIONS
Max-Forwards: 70
Content-Length: 0

""")  # noqa: W291 (the trailing spaces are the test)

# 3.1.2.11 Escaped headers in SIP Request-URI
_msg("escruri", """INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=341518
Max-Forwards: 7
Contact: <sip:caller@host39923.example.net>
Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5
CSeq: 149209342 INVITE
Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw
Content-Type: application/sdp
Content-Length: 150

""", _sdp("192.0.2.1"))

# 3.1.2.12 Invalid time zone in Date header field
_msg("baddate", """INVITE sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=2234923
Max-Forwards: 70
Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234
CSeq: 1392934 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
Date: Fri, 01 Jan 2010 16:00:00 EST
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 150

""", _sdp("192.0.2.5"))

# 3.1.2.13 Failure to enclose name-addr URI in <>
_msg("regbadct", """REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=998332
Max-Forwards: 70
Call-ID: regbadct.k345asrl3fdbv@10.0.0.1
CSeq: 1 REGISTER
Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw
Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E
l: 0

""")

# 3.1.2.14 Spaces within addr-spec
_msg("badaspec", """OPTIONS sip:user@example.org SIP/2.0
Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234
Max-Forwards: 70
From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423
To: "Watson, Thomas" < sip:t.watson@example.org >
Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3
Accept: application/sdp
CSeq: 3923239 OPTIONS
l: 0

""")

# 3.1.2.15 Non-token characters in display name
_msg("baddn", """OPTIONS sip:t.watson@example.org SIP/2.0
Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards:      70
From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43
To:      Watson, Thomas <sip:t.watson@example.org>
Call-ID: baddn.31415@c.example.com
Accept: application/sdp
CSeq:    3923239 OPTIONS
l: 0

""")

# 3.1.2.16 Unknown protocol version
_msg("badvers", """OPTIONS sip:t.watson@example.org SIP/7.0
Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw
Max-Forwards:     70
From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe
To:      T. Watson <sip:t.watson@example.org>
Call-ID: badvers.31417@c.example.com
CSeq:    1 OPTIONS
l: 0

""")

# 3.1.2.17 Start line and CSeq method mismatch
_msg("mismatch01", """OPTIONS sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch01.dj0234sxdfl3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
l: 0

""")

# 3.1.2.18 Unknown method with CSeq method mismatch
_msg("mismatch02", """NEWMETHOD sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch02.dj0234sxdfl3
CSeq: 8 INVITE
Contact: <sip:caller@host.example.net>
Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw
Content-Type: application/sdp
l: 138

""", "v=0\no=mhandley 29739 7272939 IN IP4 192.0.2.1\nc=IN IP4 192.0.2.1\n"
     "m=audio 49217 RTP/AVP 0 12\nm=video 3227 RTP/AVP 31\na=rtpmap:31 LPC\n")

# 3.1.2.19 Overlarge response code
_msg("bigcode", """SIP/2.0 4294967301 better not break the receiver
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i
CSeq: 353494 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

""")

# --- 3.2 Transaction layer semantics / 3.3 application layer semantics ----------------------

# 3.2.1 Missing transaction identifier (branch is only the magic cookie)
_msg("badbranch", """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK
Accept: application/sdp
Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n
CSeq: 8 OPTIONS
l: 0

""")

# 3.3.1 Missing required header fields
_msg("insuf", """INVITE sip:user@example.com SIP/2.0
CSeq: 193942 INVITE
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf
Content-Type: application/sdp
l: 152

""", _sdp("192.0.2.95"))

# 3.3.2 Request-URI with unknown scheme
_msg("unkscm", """OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

""")

# 3.3.3 Request-URI with known but atypical scheme
_msg("novelsc", """OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: novelsc.asdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

""")

# 3.3.4 Unknown URI schemes in header fields
_msg("unksm2", """REGISTER sip:example.com SIP/2.0
To: isbn:2983792873
From: <http://www.example.com>;tag=3234233
Call-ID: unksm2.daksdj@hyphenated-host.example.com
CSeq: 234902 REGISTER
Max-Forwards: 70
Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw
Contact: <name:John_Smith>
l: 0

""")

# 3.3.5 Proxy-Require and Require
_msg("bext01", """OPTIONS sip:user@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.net;tag=242etr
Max-Forwards: 6
Call-ID: bext01.0ha0isndaksdj
Require: nothingSupportsThis, nothingSupportsThisEither
Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis
CSeq: 8 OPTIONS
Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw
Content-Length: 0

""")

# 3.3.6 Unknown Content-Type
_msg("invut", """INVITE sip:user@example.com SIP/2.0
Contact: <sip:caller@host5.example.net>
To: sip:j.user@example.com
From: sip:caller@example.net;tag=8392034
Max-Forwards: 70
Call-ID: invut.0ha0isndaksdjadsfij34n23d
CSeq: 235448 INVITE
Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw
Content-Type: application/unknownformat
Content-Length: 40

""", '<audio>\n <pcmu port="443"/>\n</audio>\n')

# 3.3.7 Unknown authorization scheme
_msg("regaut01", """REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=87321hj23128
Max-Forwards: 8
Call-ID: regaut01.0ha0isndaksdj
CSeq: 9338 REGISTER
Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw
Authorization: NoOneKnowsThisScheme opaque-data=here
Content-Length:0

""")

# 3.3.8 Multiple values in single value required fields
_msg("multi01", """INVITE sip:user@company.com SIP/2.0
Contact: <sip:caller@host25.example.net>
Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw
Max-Forwards: 70
CSeq: 5 INVITE
Call-ID: multi01.98asdh@192.0.2.1
CSeq: 59 INVITE
Call-ID: multi01.98asdh@192.0.2.2
From: sip:caller@example.com;tag=3413415
To: sip:user@example.com
To: sip:other@example.net
From: sip:caller@example.net;tag=2923420123
Content-Type: application/sdp
l: 154
Contact: <sip:caller@host36.example.net>
Max-Forwards: 5

""", _sdp("192.0.2.25"))

# 3.3.9 Multiple Content-Length values
_msg("mcl01", """OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423
To: sip:user@example.com
From: sip:other@example.net;tag=3923942
Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf
CSeq: 15932 OPTIONS
Content-Length: 13
Max-Forwards: 60
Content-Length: 5
Content-Type: text/plain

""", "There's no way to know how many octets are supposed to be here.\n")

# 3.3.10 200 OK response with broadcast Via header field value
_msg("bcast", """SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23
Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host28.example.com>

""", _sdp("192.0.2.198"))

# 3.3.11 Max-Forwards of zero
_msg("zeromf", """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=3ghsd41
Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas
CSeq: 39234321 OPTIONS
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i
Max-Forwards: 0
Content-Length: 0

""")

# 3.3.12 REGISTER with a Contact header parameter
_msg("cparam01", """REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe
To: sip:watson@example.com
Call-ID: cparam01.70710@saturn.example.com
CSeq: 2 REGISTER
Contact: sip:+19725552222@gw1.example.net;unknownparam
l: 0

""")

# 3.3.13 REGISTER with a url-parameter
_msg("cparam02", """REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=838293
To: sip:watson@example.com
Call-ID: cparam02.70710@saturn.example.com
CSeq: 3 REGISTER
Contact: <sip:+19725552222@gw1.example.net;unknownparam>
l: 0

""")

# 3.3.14 REGISTER with a URL escaped header
_msg("regescrt", """REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=8
Max-Forwards: 70
Call-ID: regescrt.k345asrl3fdbv@192.0.2.1
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>
L:0

""")

# 3.3.15 Unacceptable Accept offering
_msg("sdp01", """INVITE sip:user@example.com SIP/2.0
To: sip:j_user@example.com
Contact: <sip:caller@host15.example.net>
From: sip:caller@example.net;tag=234
Max-Forwards: 5
Call-ID: sdp01.ndaksdj9342dasdd
Accept: text/nobodyKnowsThis
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw
Content-Length: 150
Content-Type: application/sdp

""", _sdp("192.0.2.5"))

# 3.4.1 INVITE with RFC 2543 syntax (no branch, no Max-Forwards, no Content-Length)
_msg("inv2543", """INVITE sip:UserB@example.com SIP/2.0
Via: SIP/2.0/UDP iftgw.example.com
From: <sip:+13035551111@ift.client.example.net;user=phone>
Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>
To: sip:+16505552222@ss1.example.net;user=phone
Call-ID: inv2543.1717@ift.client.example.com
CSeq: 56 INVITE
Content-Type: application/sdp

""", "v=0\no=mhandley 29739 7272939 IN IP4 192.0.2.5\ns=-\nc=IN IP4 192.0.2.5\nt=0 0\nm=audio 49217 RTP/AVP 0\n")


# What parse_message + vias() + validate_request must make of each message:
#   "ok"        a usable request (the server then answers it: verdict, 200, 405 ...)
#   "response"  a response (parsed; a redirect server has no client transaction to give it to)
#   "drop"      SipError out of parse_message or out of the Via parser: no answer can be routed
#   400/416/505 validate_request raises SipError with that status
# A set lists the answers RFC 4475 leaves to the implementation ("reject, or be liberal").
EXPECTED = {
    "wsinv": "ok", "intmeth": "ok", "esc01": "ok", "escnull": "ok", "esc02": "ok", "lwsdisp": "ok",
    "longreq": "ok", "dblreq": "ok", "semiuri": "ok", "transports": "ok", "mpart01": "ok",
    "unreason": "response", "noreason": "response",
    "badinv01": {"drop", 400}, "clerr": 400, "ncl": 400, "scalar02": 400, "scalarlg": "response",
    "quotbal": 400, "ltgtruri": 400, "lwsruri": 400, "lwsstart": 400, "trws": 400, "escruri": 400,
    "baddate": {"ok", 400}, "regbadct": {"ok", 400}, "badaspec": {"ok", 400}, "baddn": {"ok", 400},
    "badvers": 505, "mismatch01": 400, "mismatch02": 400, "bigcode": "drop",
    "badbranch": "ok", "insuf": 400, "unkscm": 416, "novelsc": 416, "unksm2": "ok", "bext01": "ok",
    "invut": "ok", "regaut01": "ok", "multi01": 400, "mcl01": 400, "bcast": "response", "zeromf": "ok",
    "cparam01": "ok", "cparam02": "ok", "regescrt": "ok", "sdp01": "ok", "inv2543": "ok",
}


def outcome(data):
    """parse -> Vias -> validate, as `serve` does with a datagram; any other exception escapes."""
    try:
        msg = tfps.parse_message(data)
    except tfps.SipError:
        return "drop"
    if not msg.is_request:
        return "response"
    try:
        msg.vias()
    except tfps.SipError:
        # No readable Via: a plain 400 cannot be routed, so the request is dropped. A request
        # with a more specific answer (505 for SIP/7.0, whose Via says SIP/7.0 too) keeps it here;
        # the server-level test below checks that `serve` really sends it.
        try:
            tfps.validate_request(msg)
        except tfps.SipError as exc:
            if exc.status != 400:
                return exc.status
        return "drop"
    try:
        tfps.validate_request(msg)
    except tfps.SipError as exc:
        return exc.status
    return "ok"


def test_torture_corpus_is_complete():
    assert set(TORTURE) == set(EXPECTED)
    assert len(TORTURE) == 49
    # bodies of the valid messages have the Content-Length the RFC gives them
    for name in ("wsinv", "esc01", "longreq", "lwsstart", "escruri", "baddate", "sdp01"):
        head, _, body = TORTURE[name].partition(b"\r\n\r\n")
        assert len(body) == 150, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rfc4475_torture_message(name):
    got = outcome(TORTURE[name])
    want = EXPECTED[name]
    assert got in (want if isinstance(want, set) else {want}), f"{name}: got {got!r}, want {want!r}"


def test_rfc4475_invalid_requests_name_the_problem():
    reasons = {}
    for name in ("clerr", "ncl", "scalar02", "quotbal", "ltgtruri", "lwsruri", "escruri", "mismatch01",
                 "insuf", "multi01", "mcl01"):
        msg = tfps.parse_message(TORTURE[name])
        with pytest.raises(tfps.SipError) as err:
            tfps.validate_request(msg)
        reasons[name] = err.value.reason
    assert "Content-Length" in reasons["clerr"]
    assert "Content-Length" in reasons["ncl"]
    assert "CSeq" in reasons["scalar02"]
    assert "To" in reasons["quotbal"]
    assert "Request-URI" in reasons["ltgtruri"]
    assert "Request" in reasons["lwsruri"]
    assert "CSeq" in reasons["mismatch01"] and "Match" in reasons["mismatch01"].title()
    assert re.search(r"Missing (From|To|Call-Id|Call-ID)", reasons["insuf"])
    assert "Multiple" in reasons["multi01"]
    assert "Content-Length" in reasons["mcl01"]


def test_wsinv_fields():
    msg = tfps.parse_message(TORTURE["wsinv"])
    assert msg.method == "INVITE" and msg.defect is None
    uri, from_addr = tfps.validate_request(msg)
    assert (uri.scheme, uri.user, uri.host) == ("sip", "vivekg", "chair-dnrc.example.com")
    assert "unknownparam" in uri.params
    assert from_addr.display == 'J Rosenberg \\\\\\"'
    assert from_addr.uri.user == "jdrosen" and from_addr.params == {"tag": "98asjd8"}
    assert tfps.tag_of(msg.header("to")) == "1918181833n"
    assert msg.header("max-forwards") == "0068"
    assert msg.header("cseq").split() == ["0009", "INVITE"]
    assert msg.header("subject") == ""
    assert msg.header("newfangledheader") == "newfangled value continued newfangled value"
    assert msg.header("unknownheaderwithunusualvalue") == ";;,,;;,;"
    vias = msg.vias()
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"), ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239")]
    assert "rport" in vias[0].params
    contact = tfps.parse_name_addr(msg.header("contact"))
    assert contact.uri.user == "jdrosen" and contact.params["q"] == "0.33" and contact.params["newparam"] == "newvalue"
    assert msg.body.startswith(b"v=0\r\n") and len(msg.body) == 150


def test_intmeth_fields():
    msg = tfps.parse_message(TORTURE["intmeth"])
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri, from_addr = tfps.validate_request(msg)
    assert uri.host == "example.com" and uri.user.startswith("1_unusual.URI~(to-be!sure)")
    assert from_addr.uri.user == "mundane"
    assert from_addr.params["tag"] == "_token~1'+`*%!-."
    assert msg.vias()[0].branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.header("call-id") == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.header("extensionheader-!.%*+_`'~") is not None
    to = tfps.parse_name_addr(msg.header("to"))
    assert "\x00" in to.display and "\x07" in to.display


def test_escapes_and_odd_users():
    uri, from_addr = tfps.validate_request(tfps.parse_message(TORTURE["esc01"]))
    assert uri.user == "sips:user@example.com" and uri.host == "example.net"
    assert from_addr.uri.user == "I have spaces"
    msg = tfps.parse_message(TORTURE["esc02"])
    assert msg.method == "RE%47IST%45R"  # % is no escape in a method: an unknown method
    uri, _ = tfps.validate_request(tfps.parse_message(TORTURE["semiuri"]))
    assert uri.host == "example.com" and tfps.dialed_number(uri.user) == "user"
    uri, _ = tfps.validate_request(tfps.parse_message(TORTURE["escnull"]))
    assert uri.host == "example.com"


def test_longreq_dblreq_transports_mpart():
    msg = tfps.parse_message(TORTURE["longreq"])
    tfps.validate_request(msg)
    vias = msg.vias()
    assert len(vias) == 34 and vias[0].host == "sip33.example.com" and vias[0].branch == ""
    assert vias[-1].branch.endswith("branchvalue")
    assert len(msg.body) == 150

    msg = tfps.parse_message(TORTURE["dblreq"])
    assert msg.method == "REGISTER" and msg.body == b"" and msg.defect is None
    assert msg.header("call-id").startswith("dblreq.0ha0")

    msg = tfps.parse_message(TORTURE["transports"])
    assert [v.transport for v in msg.vias()] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert msg.header("call-id") == "transports.kijh4akdnaqjkwendsasfdj"

    msg = tfps.parse_message(TORTURE["mpart01"])
    tfps.validate_request(msg)
    assert msg.body == _MPART_BODY


def test_responses_parse():
    msg = tfps.parse_message(TORTURE["unreason"])
    assert (msg.status, msg.is_request) == (200, False)
    assert msg.reason.startswith("= 2**3 * 5**2 ") and "\u043f\u0440\u043e\u0441\u0442\u043e\u0435" in msg.reason
    msg = tfps.parse_message(TORTURE["noreason"])
    assert (msg.status, msg.reason) == (100, "")
    with pytest.raises(tfps.SipError):
        tfps.parse_message(TORTURE["bigcode"])


def test_rfc2543_request_without_branch_gets_its_own_transaction_key():
    msg = tfps.parse_message(TORTURE["inv2543"])
    tfps.validate_request(msg)
    via = msg.vias()[0]
    key = tfps.TransactionLayer.key(msg, via)
    assert key[0] == "2543" and "inv2543.1717@ift.client.example.com" in key


# =============================================================================================
# The syntax the issue lists
# =============================================================================================

def crlf(text):
    """'\\udcXX' in `text` stands for the byte XX that is not UTF-8."""
    return text.replace("\n", "\r\n").encode("utf-8", "surrogateescape")


BASE = """INVITE sip:12125551234@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKbase1;rport
Max-Forwards: 70
From: "Alice" <sip:1001@pbx.example.com>;tag=ft1
To: <sip:12125551234@127.0.0.1>
Call-ID: base1@test
CSeq: 1 INVITE
Content-Length: 0

"""


def test_compact_forms_and_case_insensitive_names():
    data = crlf("""INVITE sip:12125551234@127.0.0.1 SIP/2.0
v: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKc1
f: <sip:1001@pbx.example.com>;tag=a
T: <sip:12125551234@127.0.0.1>
i: compact@test
CSEQ: 1 INVITE
m: <sip:1001@127.0.0.1>
k: timer
s: hello
c: application/sdp
e: gzip
l: 4

abcd""")
    msg = tfps.parse_message(data)
    uri, from_addr = tfps.validate_request(msg)
    assert msg.header("call-id") == "compact@test"
    assert msg.header("contact") == "<sip:1001@127.0.0.1>"
    assert msg.header("supported") == "timer" and msg.header("subject") == "hello"
    assert msg.header("content-type") == "application/sdp" and msg.header("content-encoding") == "gzip"
    assert msg.body == b"abcd" and from_addr.uri.user == "1001"


def test_folded_lines_and_multi_value_via():
    data = crlf("""INVITE sip:12125551234@127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKm1,
 SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bKm2 , SIP/2.0/UDP proxy.example.com;branch=z9hG4bKm3
Via: SIP/2.0/UDP last.example.com:5062;branch=z9hG4bKm4;received=192.0.2.1
From: <sip:1001@pbx.example.com>
\t;tag=a
To: <sip:12125551234@127.0.0.1>
Call-ID: fold@test
CSeq: 1
 INVITE
Content-Length: 0

""")
    msg = tfps.parse_message(data)
    tfps.validate_request(msg)
    vias = msg.vias()
    assert [(v.transport, v.host, v.port, v.branch) for v in vias] == [
        ("UDP", "127.0.0.1", 5099, "z9hG4bKm1"), ("TCP", "2001:db8::1", 5070, "z9hG4bKm2"),
        ("UDP", "proxy.example.com", None, "z9hG4bKm3"), ("UDP", "last.example.com", 5062, "z9hG4bKm4")]
    assert vias[1].sent_by == "2001:db8::1:5070" and vias[2].sent_by == "proxy.example.com:5060"
    assert tfps.tag_of(msg.header("from")) == "a"


def test_name_addr_and_addr_spec_forms():
    cases = {
        '"Quoted, Name" <sip:alice@example.com;transport=tcp>;tag=x;foo':
            ("Quoted, Name", "sip", "alice", "example.com", {"transport": "tcp"}, {"tag": "x", "foo": ""}),
        'Bare Token Name <sips:bob@[2001:db8::2]:5061>': ("Bare Token Name", "sips", "bob", "2001:db8::2", {}, {}),
        '<tel:+1-212-555-1234;phone-context=example.com>': ("", "tel", "+1-212-555-1234", "", {"phone-context": "example.com"}, {}),
        'sip:carol@example.com;tag=9': ("", "sip", "carol", "example.com", {}, {"tag": "9"}),
        '<sip:dave:secret@example.com:5080>': ("", "sip", "dave", "example.com", {}, {}),
        '<sip:example.com>': ("", "sip", "", "example.com", {}, {}),
    }
    for text, (display, scheme, user, host, uparams, params) in cases.items():
        na = tfps.parse_name_addr(text)
        assert (na.display, na.uri.scheme, na.uri.user, na.uri.host, na.uri.params, na.params) == \
            (display, scheme, user, host, uparams, params), text
    assert tfps.parse_name_addr('<sip:dave:secret@example.com:5080>').uri.port == 5080
    for bad in ('"unterminated <sip:a@b>', '<sip:a@b', 'Bad, Name <sip:a@b>', 'sip:a@b?x=y', 'no-scheme-here'):
        with pytest.raises(ValueError):
            tfps.parse_name_addr(bad)


def test_request_uri_schemes_and_ipv6():
    def validate(uri, method="INVITE"):
        data = BASE.replace("INVITE sip:12125551234@127.0.0.1:5060", f"{method} {uri}")
        if method != "INVITE":
            data = data.replace("CSeq: 1 INVITE", f"CSeq: 1 {method}")
        return tfps.validate_request(tfps.parse_message(crlf(data)))

    uri, _ = validate("sips:12125551234@[::1]:5061;user=phone")
    assert (uri.scheme, uri.user, uri.host, uri.port, uri.params) == ("sips", "12125551234", "::1", 5061, {"user": "phone"})
    uri, _ = validate("tel:+442079460000;phone-context=+44")
    assert (uri.scheme, uri.user) == ("tel", "+442079460000")
    uri, _ = validate("SIP:12125551234@EXAMPLE.COM")
    assert (uri.scheme, uri.host) == ("sip", "example.com")
    with pytest.raises(tfps.SipError) as err:
        validate("mailto:someone@example.com")
    assert err.value.status == 416
    with pytest.raises(tfps.SipError) as err:
        validate("sip:1@[::1")
    assert err.value.status == 400


def test_content_length_frames_the_body():
    data = crlf(BASE.replace("Content-Length: 0", "Content-Length: 5")) + b"hello, and trailing junk"
    msg = tfps.parse_message(data)
    assert msg.body == b"hello" and msg.defect is None
    # on UDP the datagram bounds a message without Content-Length
    msg = tfps.parse_message(crlf(BASE.replace("Content-Length: 0\n", "")) + b"v=0\r\n")
    assert msg.body == b"v=0\r\n" and msg.defect is None
    for value, reason in (("12", "Content-Length Exceeds Message"), ("abc", "Bad Content-Length"),
                          ("1" * 12, "Bad Content-Length")):
        msg = tfps.parse_message(crlf(BASE.replace("Content-Length: 0", f"Content-Length: {value}")))
        with pytest.raises(tfps.SipError) as err:
            tfps.validate_request(msg)
        assert (err.value.status, err.value.reason) == (400, reason)


def test_missing_headers_and_bad_values_give_400_naming_the_problem():
    for header, name in (("Via", "Via"), ("From", "From"), ("To", "To"), ("Call-ID", "Call-Id"), ("CSeq", "Cseq")):
        data = crlf(re.sub(rf"(?m)^{header}:.*\n", "", BASE))
        with pytest.raises(tfps.SipError) as err:
            tfps.validate_request(tfps.parse_message(data))
        assert err.value.status == 400 and "Missing" in err.value.reason and name.lower() in err.value.reason.lower()
    for old, new, word in (("CSeq: 1 INVITE", "CSeq: 1 OPTIONS", "CSeq"), ("CSeq: 1 INVITE", "CSeq: x INVITE", "CSeq"),
                           ("CSeq: 1 INVITE", "CSeq: 4294967296 INVITE", "CSeq"),
                           ("Max-Forwards: 70", "Max-Forwards: 256", "Max-Forwards"),
                           ("Max-Forwards: 70", "Max-Forwards: -1", "Max-Forwards"),
                           ("From: \"Alice\"", "From: Alice, Bob", "From"),
                           ("To: <sip:12125551234@127.0.0.1>", "To: <sip:12125551234@127.0.0.1", "To"),
                           ("Call-ID: base1@test", "Call-ID: a@test\nCall-ID: b@test", "Call-Id")):
        data = crlf(BASE.replace(old, new))
        with pytest.raises(tfps.SipError) as err:
            tfps.validate_request(tfps.parse_message(data))
        assert err.value.status == 400 and word.lower() in err.value.reason.lower(), (new, err.value.reason)


@pytest.mark.parametrize("old,new,where", [
    ("INVITE sip:12125551234@", "INVITE sip:1212\udcff5551234@", "Request-Line"),
    ("From: \"Alice\"", "From: \"Al\udce9ce\"", "From"),
    ("Call-ID: base1@test", "Call-ID: base\udcff@test", "Call-Id"),
    ("CSeq: 1 INVITE", "CSeq: 1 INVITE\nVia: SIP/2.0/UDP h\udcff;branch=z9hG4bKx", "Via"),
])
def test_bytes_that_are_not_utf8_where_a_request_is_routed_or_echoed_give_400(old, new, where):
    data = crlf(BASE.replace(old, new))
    with pytest.raises(tfps.SipError) as err:
        tfps.validate_request(tfps.parse_message(data))
    assert err.value.status == 400 and err.value.reason == f"Invalid UTF-8 In {where}" + ("" if where == "Request-Line" else " Header")


def test_bytes_that_are_not_utf8_in_other_headers_are_left_to_the_rules():
    msg = tfps.parse_message(crlf(BASE.replace("CSeq: 1 INVITE", "CSeq: 1 INVITE\nUser-Agent: Yealink \udce9")))
    tfps.validate_request(msg)
    assert msg.header("user-agent") == "Yealink \udce9"  # R12 rejects it (tests/test_engine.py)


def test_percent_encoded_bytes_that_are_not_utf8_stay_recognizable():
    msg = tfps.parse_message(crlf(BASE.replace("sip:1001@", "sip:10%ff01@").replace("sip:12125551234@127", "sip:%fe1@127")))
    uri, from_addr = tfps.validate_request(msg)
    attempt = tfps.call_identity(msg, uri, from_addr, "127.0.0.1", 0.0)
    assert attempt.user == "10\udcff01" and attempt.number == "\udcfe1"  # identity_defect: R12
    assert tfps.identity_defect(attempt) == "bytes that are not UTF-8 in the user"


@pytest.mark.parametrize("header,defect", [
    ("P-tfps: 1001;pbx.example.com;192.0.2.10;Yealink \udcff;1", "bytes that are not UTF-8 in the P-tfps header"),
    ("P-tfps: 1001;pbx.example.com\nP-tfps: 1001;pbx.example.com", "more than one P-tfps header")])
def test_an_identity_header_twice_or_not_utf8_is_a_defect(header, defect):
    msg = tfps.parse_message(crlf(BASE.replace("Content-Length", header + "\nContent-Length")))
    uri, from_addr = tfps.validate_request(msg)
    assert tfps.call_identity(msg, uri, from_addr, "127.0.0.1", 0.0).defect == defect


def test_invite_transaction_timers_on_a_virtual_clock():
    """RFC 3261 17.2.1 over UDP: Timer G doubles up to T2, Timer H ends an unacknowledged
    transaction after 64*T1; an ACK stops retransmissions, and Timer I ends it after T4."""
    txl = tfps.TransactionLayer()
    msg = tfps.parse_message(crlf(BASE))
    tx, _ = txl.receive(msg, msg.vias()[0], "dest", False, 0.0)
    assert txl.respond(tx, 302, b"302", 0.0) == [("dest", b"302")] and tx.state == tfps.COMPLETED
    sent = [t for t in (x / 100 for x in range(0, 3300)) if txl.poll(t)]
    assert sent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]  # 0.5 1 2 4 4 4 ... seconds apart
    assert tx.key not in txl.table  # Timer H at 32 s
    msg = tfps.parse_message(crlf(BASE.replace("z9hG4bKbase1", "z9hG4bKbase2")))
    tx, _ = txl.receive(msg, msg.vias()[0], "dest", False, 40.0)
    txl.respond(tx, 302, b"302", 40.0)
    ack = tfps.parse_message(crlf(BASE.replace("z9hG4bKbase1", "z9hG4bKbase2").replace("INVITE", "ACK")))
    assert txl.receive(ack, ack.vias()[0], "dest", False, 40.2) == (None, []) and tx.state == tfps.CONFIRMED
    assert not any(txl.poll(40 + t / 10) for t in range(1, 50)) and tx.key in txl.table  # absorbs ACKs for T4
    assert txl.poll(45.3) == [] and tx.key not in txl.table


def test_the_transaction_state_machine_refuses_illegal_transitions():
    txl = tfps.TransactionLayer()
    msg = tfps.parse_message(crlf(BASE))
    tx, _ = txl.receive(msg, msg.vias()[0], "dest", True, 0.0)
    assert not tx.answered and not tx.expects("ack")
    txl.respond(tx, 100, b"100", 0.0)
    txl.respond(tx, 302, b"302", 0.0)
    assert tx.answered
    with pytest.raises(tfps.IllegalTransition):
        txl.respond(tx, 487, b"487", 0.1)  # a second final response
    with pytest.raises(tfps.IllegalTransition):
        tfps.TransactionLayer.advance(tx, "timer_i")  # Timer I runs only once the ACK came
    assert set(tfps.TRANSITIONS) == {tfps.PROCEEDING, tfps.COMPLETED, tfps.CONFIRMED}
    assert all(state in tfps.TRANSITIONS or state == tfps.TERMINATED
               for edges in tfps.TRANSITIONS.values() for state in edges.values())


def test_the_sip_sections_know_nothing_of_sockets_threads_or_the_clock():
    """Sections 3, 4 and 13 are sans-IO: bytes and times come in as arguments, bytes to send go out."""
    text = open(tfps.__file__, encoding="utf-8").read()
    sip = text[text.index("# 3. SIP messages"):text.index("# 5. Numbers")]
    sip += text[text.index("# 13. SIP service"):text.index("# 14. Server")]
    assert "class SipService" in sip
    assert not re.findall(r"\b(socket|selectors|threading|time)\.\w+", sip)


def test_transaction_table_refuses_new_transactions_past_its_limit():
    txl = tfps.TransactionLayer(limit=2)
    msgs = [tfps.parse_message(crlf(BASE.replace("z9hG4bK", f"z9hG4bK{i}x"))) for i in range(3)]
    for msg in msgs[:2]:
        tx, _ = txl.receive(msg, msg.vias()[0], "dest", False, 0.0)
        assert tx is not None
    with pytest.raises(tfps.TransactionTableFull):
        txl.receive(msgs[2], msgs[2].vias()[0], "dest", False, 0.0)
    assert txl.receive(msgs[0], msgs[0].vias()[0], "dest", False, 0.1) == (None, [])  # a retransmission still matches
    assert len(txl.table) == 2


def test_hopeless_input_raises_sip_error_only():
    for data in (b"", b"\r\n\r\n", b"hello world", b"\x00\xff\xfe", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"SIP/2.0 abc\r\n\r\n", b"SIP/2.0 999 Too Big\r\n\r\n", b" leading space INVITE\r\n\r\n"):
        with pytest.raises(tfps.SipError):
            tfps.parse_message(data)


def test_build_response_echoes_and_tags():
    msg = tfps.parse_message(crlf(BASE))
    vias = [v.raw for v in msg.vias()]
    data = tfps.build_response(msg, 302, vias=vias, to_tag="tt1", headers=[("Contact", "<sip:A0012125551234@x>")])
    resp = tfps.parse_message(data)
    assert (resp.status, resp.reason) == (302, "Moved Temporarily")
    assert resp.header("via") == msg.header("via")
    assert resp.header("from") == msg.header("from") and resp.header("call-id") == "base1@test"
    assert tfps.tag_of(resp.header("to")) == "tt1" and resp.header("cseq") == "1 INVITE"
    assert resp.header("contact") == "<sip:A0012125551234@x>" and resp.header("content-length") == "0"
    # an existing To tag is kept
    msg2 = tfps.parse_message(crlf(BASE.replace("To: <sip:12125551234@127.0.0.1>", "To: <sip:1@h>;tag=old")))
    assert tfps.tag_of(tfps.parse_message(tfps.build_response(msg2, 481, vias=vias, to_tag="new")).header("to")) == "old"


# =============================================================================================
# TCP stream framing
# =============================================================================================

def test_stream_framer_partial_and_pipelined():
    one = crlf(BASE.replace("Content-Length: 0", "Content-Length: 3")) + b"abc"
    two = crlf(BASE.replace("base1@test", "base2@test"))
    framer = tfps.StreamFramer(65535)
    stream = b"\r\n" + one + two + b"\r\n\r\n" + one
    got = []
    for i in range(0, len(stream), 7):
        got += framer.feed(stream[i:i + 7])
    assert got == [one, two, one] and framer.buffer == bytearray()
    assert framer.feed(one + two) == [one, two]


def test_stream_framer_limits():
    framer = tfps.StreamFramer(2000)
    with pytest.raises(tfps.SipError) as err:
        framer.feed(crlf(BASE.replace("Content-Length: 0", "Content-Length: 5000")))
    assert err.value.status == 513
    with pytest.raises(tfps.SipError) as err:
        tfps.StreamFramer(2000).feed(b"INVITE sip:x@y SIP/2.0\r\nX: " + b"a" * 3000)
    assert err.value.status == 513
    with pytest.raises(tfps.SipError) as err:
        tfps.StreamFramer(2000).feed(crlf(BASE.replace("Content-Length: 0\n", "")))
    assert err.value.status == 400


# =============================================================================================
# Nothing but SipError escapes: targeted inputs and a seeded mutation fuzz loop
# =============================================================================================

def exercise(data):
    """Everything `serve` does with one datagram before the engine: the SIP service, in process.
    Returns a short outcome; lets any exception other than SipError escape."""
    service = tfps.SipService(tfps.Config().server)
    sends, invite = service.receive(data, FakeEndpoint("udp"), ("127.0.0.1", 5099), 0.0)
    for _dest, packet in sends:
        tfps.parse_message(packet)
    if invite is not None:
        return "invite"
    return int(sends[0][1].split(b" ", 2)[1]) if sends else "drop"


class FakeEndpoint:
    def __init__(self, transport):
        self.transport = transport


@pytest.mark.parametrize("header,value", [
    ("Content-Length", "\u00b2"),            # str.isdigit() is True for superscript two, int() fails
    ("Content-Length", "\u0663"),            # ARABIC-INDIC DIGIT THREE
    ("Max-Forwards", "\u00b2"),
    ("Max-Forwards", "7" * 5000),            # int() refuses more than 4300 digits
    ("Max-Forwards", "\u0661\u0660"),
    ("P-Calls", "\u00b2"),
    ("P-tfps", "1001;pbx.example.com;8.8.8.8;ua;\u00b2"),
    ("CSeq", "\u0661 INVITE"),
    ("Via", "SIP/2.0/UDP 127.0.0.1:\u0665\u0660\u0669\u0669;branch=z9hG4bKx"),
], ids=["cl-superscript", "cl-arabic", "mf-superscript", "mf-5000-digits", "mf-arabic", "p-calls-superscript",
        "p-tfps-calls-superscript", "cseq-arabic", "via-port-arabic"])
def test_odd_digits_never_raise_anything_but_sip_error(header, value):
    head = re.sub(rf"(?m)^{header}:.*\n", "", BASE)
    data = crlf(head.replace("Call-ID:", f"{header}: {value}\nCall-ID:"))
    exercise(data)  # raises (and fails the test) on anything but SipError


def test_streamframer_odd_content_length_raises_sip_error_only():
    for value in ("9" * 5000, "\u0663"):
        framer = tfps.StreamFramer(65535)
        data = crlf(BASE.replace("Content-Length: 0", f"Content-Length: {value}"))
        with pytest.raises(tfps.SipError) as err:
            framer.feed(data)
        assert err.value.status == 400 and "Content-Length" in err.value.reason, (value[:8], err.value.reason)


INTERESTING = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b";", b",", b"<", b">", b'"', b"\\", b"@", b"%", b"%00",
               b"[", b"]", b"[::1]", b"=", b"?", b"\x00", b"\xff", b"\xc3\xa9", b"\xc2\xb2", b"\xd9\xa3", b"0",
               b"99999", b"4294967296", b"-1", b"SIP/2.0", b"z9hG4bK", b";rport", b";maddr=127.0.0.1",
               b";received=::1", b"\r\n ", b"\r\n\r\n", b"sip:", b"tel:", b"sips:", b"A00", b"R06",
               b"Content-Length: 99\r\n", b"l: 3\r\n", b"Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKf\r\n",
               b"P-tfps: a;b;c;d;e;f;g\r\n", b"From: x\r\n", b"CSeq: 1 OPTIONS\r\n", b"Max-Forwards: 0\r\n"]


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        pos = rng.randrange(len(data) + 1) if data else 0
        if op == 0 and data:                        # flip a byte
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 1:                               # insert random bytes
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2 and data:                      # delete a range
            del data[pos:pos + rng.randint(1, 40)]
        elif op == 3 and data:                      # duplicate a range
            chunk = data[pos:pos + rng.randint(1, 80)]
            at = rng.randrange(len(data) + 1)
            data[at:at] = chunk
        elif op == 4:                               # insert a SIP-significant token
            data[pos:pos] = rng.choice(INTERESTING)
        else:                                       # truncate
            del data[pos:]
    return bytes(data)


def test_fuzz_no_exception_but_sip_error_escapes():
    rng = random.Random(20240615)
    seeds = [crlf(BASE), sip_invite("12125551234", 5060, headers=["P-tfps: 1001;pbx.example.com;8.8.8.8;UA;3",
                                                                  "User-Agent: Softphone 1.0"]),
             TORTURE["wsinv"], TORTURE["intmeth"], TORTURE["esc01"], TORTURE["longreq"], TORTURE["inv2543"]]
    failures, outcomes = [], {}
    for i in range(4000):
        data = mutate(rng, seeds[i % len(seeds)])
        try:
            got = exercise(data)
            framer = tfps.StreamFramer(4096)
            try:
                for j in range(0, len(data), 97):
                    framer.feed(data[j:j + 97])
            except tfps.SipError:
                pass
        except Exception as exc:  # noqa: BLE001 - this is what the test looks for
            failures.append((i, type(exc).__name__, str(exc)[:80], data[:160]))
            continue
        outcomes[got] = outcomes.get(got, 0) + 1
    assert not failures, f"{len(failures)} inputs raised; first ones: {failures[:3]}"
    # the loop reaches all the interesting places, not just the hopeless-input exit
    answered = outcomes.get("invite", 0) + sum(n for got, n in outcomes.items() if isinstance(got, int) and got < 400)
    assert answered > 200 and outcomes.get(400, 0) > 200 and outcomes.get("drop", 0) > 50, outcomes


# =============================================================================================
# Torture messages sent to a running server over UDP
# =============================================================================================

def route_to(data, port, tag=b""):
    """Make the top Via point back at the test's socket: its sent-by becomes 127.0.0.1:PORT;rport
    (the RFC messages name documentation hosts; a response must come back here). `tag` is added to
    a z9hG4bK branch: several RFC messages share branch=z9hG4bKkdjuw, and a message matching an
    earlier, confirmed transaction is rightly absorbed without an answer (RFC 3261 17.2.1)."""
    data = re.sub(rb"(?i)((?:^|\r\n)(?:via|v)[ \t]*:\s*SIP\s*/\s*\d+\.\d+\s*/\s*[A-Za-z]+\s+)[^;,\r\n]+",
                  lambda m: m.group(1) + f"127.0.0.1:{port};rport".encode(), data, count=1)
    return re.sub(rb"(branch\s*=\s*z9hG4bK[^;,\s]*)", lambda m: m.group(1) + tag, data, count=1) if tag else data


SERVER_EXPECTED = {
    # valid
    "wsinv": 302, "esc01": 302, "invut": 302, "sdp01": 302, "inv2543": 302, "longreq": 302,
    "intmeth": 405, "esc02": 405, "escnull": 405, "dblreq": 405, "mpart01": 405, "regaut01": 405,
    "lwsdisp": 200, "semiuri": 200, "transports": 200, "badbranch": 200,
    # invalid, answered
    "clerr": 400, "ncl": 400, "scalar02": 400, "quotbal": 400, "ltgtruri": 400, "lwsruri": 400,
    "lwsstart": 400, "trws": 400, "escruri": 400, "mismatch01": 400, "mismatch02": 400, "insuf": 400,
    "multi01": 400, "mcl01": 400, "unkscm": 416, "novelsc": 416, "badvers": 505,
    # dropped: responses, an unreadable status line, an unreadable Via
    "unreason": None, "noreason": None, "bcast": None, "scalarlg": None, "bigcode": None, "badinv01": None,
}


def test_torture_messages_against_running_server(start_server):
    server = start_server(sections={"policy": {"learning_days": "0"}})
    sock = udp_socket(timeout=3)
    port = sock.getsockname()[1]
    got = {}
    try:
        for name in sorted(SERVER_EXPECTED):
            data = route_to(TORTURE[name], port, tag=name.encode())
            if SERVER_EXPECTED[name] is not None or name == "badinv01":
                assert f"127.0.0.1:{port};rport".encode() in data, name
            sock.sendto(data, ("127.0.0.1", server.port))
            statuses = [reply.status for reply in answers_before_options(sock, server.port)]
            got[name] = statuses[-1] if statuses else None
            if got[name] and got[name] >= 200 and got[name] != 200:
                # absorb: ACK the final answer to an INVITE so no retransmission comes later
                msg = tfps.parse_message(data)
                if msg.method == "INVITE":
                    ack = re.sub(rb"^INVITE ", b"ACK ", data, count=1)
                    ack = re.sub(rb"(?mi)^(cseq:\s*\d+\s*)INVITE", rb"\1ACK", ack)
                    sock.sendto(ack, ("127.0.0.1", server.port))
        # still serving afterwards
        sock.sendto(sip_invite("12125551234", server.port, method="OPTIONS", local_port=port), ("127.0.0.1", server.port))
        reply, _ = sock.recvfrom(65536)
        assert tfps.parse_message(reply).status == 200
    finally:
        sock.close()
    wrong = {n: (got[n], want) for n, want in SERVER_EXPECTED.items() if got[n] != want}
    assert not wrong, f"(got, want): {wrong}"
    assert server.proc.poll() is None
    assert "unexpected error" not in server.read_log()
